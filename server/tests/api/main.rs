mod auth;
mod helpers;
mod input;
mod link;
mod openapi;
mod restarts;
mod services;
