//! Serial reply decoding and whole-context parsing, plus the agent's derived names, must never
//! panic on any bytes the port may deliver.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = Path::new("/dev/ttyS1");
    let _ = cloudsigma_api::context::decode_reply(p, "", data);
    if let Ok(ctx) = cloudsigma_api::context::parse_context(p, data) {
        let _ = cloudsigma_agent::template::local_hostname(&ctx);
        let _ = cloudsigma_agent::template::build_context(&ctx, "/dev/ttyS1");
        if let Ok(Some(ud)) = cloudsigma_agent::userdata::extract(&ctx) {
            let _ = cloudsigma_agent::userdata::classify(ud);
        }
    }
});
