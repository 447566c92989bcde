//! The dashboard over HTTP, as a browser uses it: content negotiation on the
//! API's paths, sign-in with a session cookie, the restart form with its
//! CSRF token, live updates over server-sent events, and the history pages.

#[path = "../api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

mod attacks;
mod browser;
mod connections;
mod history;
mod live;
mod overlap;
mod pages;
pub mod restart;
