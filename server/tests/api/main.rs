mod auth;
mod helpers;
mod host_binding;
mod input;
mod link;
mod openapi;
mod restarts;
mod services;
