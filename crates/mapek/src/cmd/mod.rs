//! One module per subcommand.

pub mod approve;
pub mod demo;
pub mod publish;
pub mod render;
pub mod run;
pub mod sim;
pub mod streams;
pub mod subscribe;
