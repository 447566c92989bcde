mod auth;
mod helpers;
mod hosts;
mod input;
mod link;
mod openapi;
mod restarts;
mod services;
