pub mod connections;
pub mod notify;
