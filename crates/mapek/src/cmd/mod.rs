//! One module per subcommand.

pub mod publish;
pub mod render;
pub mod streams;
pub mod subscribe;
