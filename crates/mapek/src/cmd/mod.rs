//! One module per subcommand.

pub mod approve;
pub mod audit;
pub mod demo;
pub mod export;
pub mod knowledge;
pub mod publish;
pub mod render;
pub mod replay;
pub mod run;
pub mod shadow;
pub mod sim;
pub mod status;
pub mod streams;
pub mod subscribe;
