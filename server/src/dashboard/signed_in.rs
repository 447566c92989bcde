use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use std::future::Future;
use std::pin::Pin;

use crate::auth::TokenCache;
use crate::dashboard::response::PageError;
use crate::dashboard::session::{Session, Sessions};

/// A signed-in person whose token is still valid; pages that need one send
/// everybody else to `/login`.
pub struct SignedIn(pub Session);

impl FromRequest for SignedIn {
    type Error = PageError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, PageError>>>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let sessions = request.app_data::<web::Data<Sessions>>().cloned();
        let tokens = request.app_data::<web::Data<TokenCache>>().cloned();
        let request = request.clone();
        let sign_in = PageError::SignInRequired {
            next: request
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
        };
        Box::pin(async move {
            let (Some(sessions), Some(tokens)) = (sessions, tokens) else {
                return Err(sign_in);
            };
            let Some(session) = sessions.find(&request).await? else {
                return Err(sign_in);
            };
            match tokens.check(&session.token_hash).await? {
                Some(_) => Ok(SignedIn(session)),
                None => {
                    sessions.forget(&session.token_hash).await;
                    Err(sign_in)
                }
            }
        })
    }
}
