//! cloudsigma-agent as a library: the binary's modules, exposed for the fuzz targets and the bench.

pub mod cli;
pub mod cloudconfig;
pub mod error;
pub mod fsutil;
pub mod net;
pub mod paths;
pub mod report;
pub mod run;
pub mod serial;
pub mod show;
pub mod stamp;
pub mod steps;
pub mod sys;
pub mod template;
pub mod userdata;
pub mod yaml;
