//! The service of the README's "Writing a service for baton": run it on its
//! own (`cargo run -p baton-sdk --example service`, it binds 127.0.0.1:8000)
//! or under baton with a socket named `http`.

use baton_sdk::{notify::Notifier, shutdown::Shutdown, sockets::Listeners};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // First, while the process has one thread: under baton this takes the
    // socket named "http"; on its own, it binds 127.0.0.1:8000.
    let http = Listeners::from_env()?
        .or_bind("http", "127.0.0.1:8000")
        .tcp("http")?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let shutdown = Shutdown::from_env()?; // SIGTERM starts the exit
        let handle = shutdown.handle();
        http.set_nonblocking(true)?;
        let http = tokio::net::TcpListener::from_std(http)?;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = handle.accepting_stopped() => break,
                    Ok((stream, _)) = http.accept() => {
                        let connection = handle.connection(); // phase 4 waits for it
                        tokio::spawn(async move {
                            let _request = connection.in_flight(); // phase 3 waits for it
                            drop(stream); // serve it
                        });
                    }
                }
            }
        });
        Notifier::from_env()?.ready_with_status("serving")?;
        shutdown.run().await; // STOPPING=1, the phases, then main returns
        Ok(())
    })
}
