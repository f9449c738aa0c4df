//! cloudsigma-agent as a library: the binary's modules, exposed for the fuzz targets and the bench.

pub mod cloudconfig;
pub mod fsutil;
pub mod net;
pub mod ntp;
pub mod redact;
pub mod report;
pub mod run;
pub mod storage;
pub mod sys;
pub mod template;
pub mod userdata;
