//! A hyper HTTP/1.1 service whose keep-alive connections survive a restart:
//! the old generation hands each one over between two requests, and the new
//! one goes on serving it. Run alone, it binds 127.0.0.1:8080; under baton,
//! it serves the socket named `http`.

use std::convert::Infallible;

use baton_sdk::handoff::{Channel, Handoff};
use baton_sdk::shutdown::{Shutdown, ShutdownHandle};
use baton_sdk::{http1, notify::Notifier, sockets::Listeners};
use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, body::Incoming, service::service_fn};
use tokio::io::{AsyncRead, AsyncWrite};

async fn hello(_: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let generation = std::env::var("BATON_GENERATION").unwrap_or_default();
    let body = format!("hello from generation {generation}\n");
    Ok(Response::new(Full::new(Bytes::from(body))))
}

async fn serve<S>(stream: S, buffer: Vec<u8>, handle: ShutdownHandle)
where
    S: AsyncRead + AsyncWrite + std::os::fd::AsFd + Unpin + Send + 'static,
{
    let _open = handle.connection();
    let _ = http1::serve(stream, "http", buffer, service_fn(hello), &handle).await;
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // First, while the process has one thread.
    let http = Listeners::from_env()?
        .or_bind("http", "127.0.0.1:8080")
        .tcp("http")?;
    let channel = Channel::from_env()?;
    tokio::runtime::Runtime::new()?.block_on(async move {
        let shutdown = Shutdown::from_env()?;
        let handle = shutdown.handle();
        if let Some(channel) = &channel {
            // Before READY=1: the previous generation's connections.
            let mut incomings = Handoff::new().accept(channel)?;
            let handle = handle.clone();
            tokio::spawn(async move {
                while let Some(incoming) = incomings.recv().await {
                    tokio::spawn(serve(incoming.stream, incoming.buffer, handle.clone()));
                }
            });
        }
        http.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(http)?;
        let accepting = handle.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = accepting.accepting_stopped() => break,
                    Ok((stream, _)) = listener.accept() => {
                        tokio::spawn(serve(stream, Vec::new(), accepting.clone()));
                    }
                }
            }
        });
        Notifier::from_env()?.ready()?;
        let report = shutdown.run().await;
        eprintln!("exit: {} connections handed over", report.handed_over);
        Ok(())
    })
}
