//! hyper connections handed over between two requests, over real socket
//! pairs, the test playing the agent.
#![cfg(feature = "hyper")]

use std::convert::Infallible;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use baton_sdk::handoff::{Channel, Handoff, seqpacket_pair};
use baton_sdk::http1::{self, Outcome};
use baton_sdk::shutdown::{Shutdown, ShutdownHandle};
use http_body_util::{BodyExt as _, Either, Full};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use nix::sys::socket::{ControlMessage, MsgFlags, recv, sendmsg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A body of two chunks a while apart: a response still being written.
struct Slow {
    chunks: Vec<&'static str>,
    pause: Pin<Box<tokio::time::Sleep>>,
}

impl Body for Slow {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.chunks.is_empty() {
            return Poll::Ready(None);
        }
        if self.chunks.len() == 1 {
            std::task::ready!(self.pause.as_mut().poll(cx));
        }
        let chunk = self.chunks.remove(0);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }
}

type Answer = Response<Either<Full<Bytes>, Slow>>;

/// Answers `<generation> <path>`; `/slow` streams two chunks 300 ms apart.
fn service(
    generation: &'static str,
) -> impl hyper::service::Service<Request<Incoming>, Response = Answer, Error = Infallible, Future: Send>
+ Clone
+ Unpin {
    service_fn(move |request: Request<Incoming>| async move {
        let path = request.uri().path().to_owned();
        // Read the request body to its end.
        let _ = request.into_body().collect().await;
        let body = if path == "/slow" {
            Either::Right(Slow {
                chunks: vec!["slow ", "end\n"],
                pause: Box::pin(tokio::time::sleep(Duration::from_millis(300))),
            })
        } else {
            Either::Left(Full::new(Bytes::from(format!("{generation} {path}\n"))))
        };
        Ok::<_, Infallible>(Response::new(body))
    })
}

fn broker(agent_old: &OwnedFd, agent_new: &OwnedFd) {
    let (old_end, new_end) = seqpacket_pair().unwrap();
    for (agent, text, fd) in [
        (agent_new, "PREDECESSOR=1\n", &new_end),
        (agent_old, "SUCCESSOR=2\n", &old_end),
    ] {
        let fds = [fd.as_raw_fd()];
        sendmsg::<()>(
            agent.as_raw_fd(),
            &[std::io::IoSlice::new(text.as_bytes())],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .unwrap();
    }
}

/// Two generations serving one listener: the first accepts, the second
/// takes what the first hands over.
struct Generations {
    address: std::net::SocketAddr,
    old: ShutdownHandle,
    old_exit: Option<Shutdown>,
    agent_old: OwnedFd,
    agent_new: OwnedFd,
    _new: Shutdown,
}

async fn generations() -> Generations {
    let (agent_old, old_channel) = seqpacket_pair().unwrap();
    let (agent_new, new_channel) = seqpacket_pair().unwrap();
    let old_channel = Channel::from_fd(old_channel).unwrap();
    let new_channel = Channel::from_fd(new_channel).unwrap();

    let new = Shutdown::builder().signal(None).build().unwrap();
    let new_handle = new.handle();
    let mut incomings = Handoff::new().accept(&new_channel).unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = incomings.recv().await {
            let handle = new_handle.clone();
            tokio::spawn(async move {
                let _open = handle.connection();
                let name = incoming.name.clone();
                http1::serve(
                    incoming.stream,
                    &name,
                    incoming.buffer,
                    service("2"),
                    &handle,
                )
                .await
            });
        }
    });

    let old = Shutdown::builder()
        .signal(None)
        .drain_timeout(Duration::from_secs(6))
        .channel(Some(old_channel))
        .build()
        .unwrap();
    let old_handle = old.handle();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepting = old_handle.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handle = accepting.clone();
            tokio::spawn(async move {
                let _open = handle.connection();
                let outcome = http1::serve(stream, "http", Vec::new(), service("1"), &handle).await;
                assert_eq!(outcome.unwrap(), Outcome::HandedOver);
            });
        }
    });
    Generations {
        address,
        old: old_handle,
        old_exit: Some(old),
        agent_old,
        agent_new,
        _new: new,
    }
}

impl Generations {
    /// Brokers the pair and stops the old generation; returns its exit.
    fn restart(&mut self) -> tokio::task::JoinHandle<baton_sdk::shutdown::Report> {
        broker(&self.agent_old, &self.agent_new);
        self.old.trigger();
        tokio::spawn(self.old_exit.take().unwrap().run())
    }

    fn handed_over_message(&self) -> String {
        let mut buffer = [0u8; 64];
        let length = recv(
            self.agent_old.as_raw_fd(),
            &mut buffer,
            MsgFlags::MSG_DONTWAIT,
        )
        .unwrap();
        String::from_utf8_lossy(&buffer[..length]).into_owned()
    }
}

/// Reads one response (a body of known length, or chunked) and returns
/// its body.
async fn response(client: &mut TcpStream) -> String {
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        loop {
            assert_eq!(
                client.read(&mut byte).await.unwrap(),
                1,
                "closed: {:?}",
                String::from_utf8_lossy(&bytes)
            );
            bytes.push(byte[0]);
            let text = String::from_utf8_lossy(&bytes).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let head = head.to_ascii_lowercase();
                if let Some(length) = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length: "))
                {
                    if body.len() == length.trim().parse::<usize>().unwrap() {
                        assert!(head.starts_with("http/1.1 200"), "{head}");
                        assert!(!head.contains("connection: close"), "{head}");
                        return body.to_owned();
                    }
                } else if body.ends_with("0\r\n\r\n") {
                    // Chunked: keep the data, drop the sizes.
                    return body
                        .split("\r\n")
                        .enumerate()
                        .filter(|(index, _)| index % 2 == 1)
                        .map(|(_, chunk)| chunk)
                        .collect();
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("a response in time")
}

#[tokio::test]
async fn a_connection_handed_over_with_a_half_received_request_completes_it_in_the_new_generation()
{
    let mut generations = generations().await;
    let mut client = TcpStream::connect(generations.address).await.unwrap();
    client
        .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(response(&mut client).await, "1 /a\n");
    client.write_all(b"GET /b HTTP/1.1\r\nHo").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let exit = generations.restart();
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.write_all(b"st: x\r\n\r\n").await.unwrap();
    assert_eq!(response(&mut client).await, "2 /b\n");
    client
        .write_all(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(response(&mut client).await, "2 /c\n");
    let report = exit.await.unwrap();
    assert_eq!(report.handed_over, 1);
    assert_eq!(generations.handed_over_message(), "HANDED_OVER=1\n");
}

#[tokio::test]
async fn a_response_still_being_written_finishes_before_the_connection_moves() {
    let mut generations = generations().await;
    let mut client = TcpStream::connect(generations.address).await.unwrap();
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The restart comes between the two chunks of the response.
    let exit = generations.restart();
    assert_eq!(response(&mut client).await, "slow end\n");
    client
        .write_all(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(response(&mut client).await, "2 /after\n");
    // Pipelined requests already read are answered in order, by whichever
    // generation holds the connection when it reaches them.
    client
        .write_all(b"GET /d HTTP/1.1\r\nHost: x\r\n\r\nGET /e HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(response(&mut client).await, "2 /d\n");
    assert_eq!(response(&mut client).await, "2 /e\n");
    assert_eq!(exit.await.unwrap().handed_over, 1);
}

#[tokio::test]
async fn without_a_successor_a_connection_is_served_on_and_closed_once_quiet() {
    let shutdown = Shutdown::builder()
        .signal(None)
        .drain_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let handle = shutdown.handle();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    let serving = tokio::spawn({
        let handle = handle.clone();
        async move {
            let _open = handle.connection();
            http1::serve(stream, "http", Vec::new(), service("1"), &handle).await
        }
    });
    handle.trigger();
    let exit = tokio::spawn(shutdown.run());
    // Still answered while its client keeps talking.
    for path in ["/a", "/b", "/c"] {
        tokio::time::sleep(Duration::from_millis(400)).await;
        client
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(response(&mut client).await, format!("1 {path}\n"));
    }
    // Then quiet: closed between two requests.
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest))
        .await
        .expect("closed once quiet")
        .unwrap();
    assert!(rest.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(serving.await.unwrap().unwrap(), Outcome::Closed);
    assert_eq!(exit.await.unwrap().handed_over, 0);
}
