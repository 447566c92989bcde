mod auth;
mod helpers;
mod input;
mod limits;
mod link;
mod openapi;
mod restarts;
mod services;
