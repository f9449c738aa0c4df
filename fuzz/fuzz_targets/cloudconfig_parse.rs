//! User data classification, jinja rendering and cloud-config parsing (plus shellify) must never
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = match cloudsigma_agent::userdata::classify(data.to_vec()) {
        Ok(cloudsigma_agent::userdata::Kind::CloudConfig(t)) => t,
        Ok(cloudsigma_agent::userdata::Kind::JinjaTemplate(src)) => {
            let ctx = serde_json::json!({"ds": {"meta_data": {"instance_id": "u", "local_hostname": "h"}}, "v1": {}});
            match cloudsigma_agent::template::render(&src, &ctx) {
                Ok(t) => t,
                Err(_) => return,
            }
        }
        _ => String::from_utf8_lossy(data).into_owned(),
    };
    if let Ok(cfg) = cloudsigma_agent::cloudconfig::parse(&text) {
        let _ = cloudsigma_agent::cloudconfig::shellify(&cfg.runcmd);
        for f in &cfg.write_files {
            let _ = cloudsigma_agent::userdata::gunzip(&f.content);
        }
    }
});
