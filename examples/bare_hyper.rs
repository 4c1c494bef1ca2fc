//! The CPU floor for the load benchmark (`bench/run.sh`): a bare hyper 1 HTTP/1 server that
//! answers every request with one fixed body, on the same runtime and connection settings as
//! defender-proxy but with no routing, auth, cache, metrics or logging.
//!
//! Usage: `bare_hyper --listen 127.0.0.1:PORT (--body-file FILE | --size BYTES)`. Prints
//! `bare hyper on http://ADDR` once listening; runs until SIGTERM or SIGINT.

#![forbid(unsafe_code)]

use std::{convert::Infallible, net::SocketAddr, path::PathBuf};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};

struct Args {
    listen: SocketAddr,
    body: Bytes,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut listen: Option<SocketAddr> = None;
    let mut body: Option<Bytes> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => listen = Some(value()?.parse().context("--listen")?),
            "--body-file" => {
                let path = PathBuf::from(value()?);
                let bytes = std::fs::read(&path).with_context(|| format!("--body-file {}", path.display()))?;
                body = Some(Bytes::from(bytes));
            }
            // A JSON string of the given total size, for when no real body is at hand.
            "--size" => {
                let size: usize = value()?.parse().context("--size")?;
                let filler = "x".repeat(size.saturating_sub(2));
                body = Some(Bytes::from(format!("\"{filler}\"")));
            }
            other => bail!("unknown argument {other}; usage: --listen ADDR (--body-file FILE | --size BYTES)"),
        }
    }
    Ok(Args {
        listen: listen.context("--listen ADDR is required")?,
        body: body.context("--body-file FILE or --size BYTES is required")?,
    })
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    // The same runtime defender-proxy's main builds: multi-threaded, one worker per core.
    tokio::runtime::Runtime::new()?.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!("bare hyper on http://{}", listener.local_addr()?);
    let content_type = HeaderValue::from_static("application/json; charset=utf-8");
    let body = args.body;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    eprintln!("accept failed: {e}");
                    continue;
                }
            },
            () = &mut stop => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let (body, content_type) = (body.clone(), content_type.clone());
        tokio::spawn(async move {
            let service = service_fn(move |_req: Request<Incoming>| {
                let mut response = Response::new(Full::new(body.clone()));
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, content_type.clone());
                async move { Ok::<_, Infallible>(response) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                eprintln!("connection ended with an error: {e}");
            }
        });
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}
