//! The accept loop: HTTP/1.1 through hyper with a header-read timeout (a plain `axum::serve`
//! has none), connections closed without an answer when a handler asks for it (Reset and
//! Hang faults), and graceful shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::http::CloseConnection;
use crate::Shared;

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Open connections get this long to finish after shutdown before they are dropped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) async fn serve(listener: TcpListener, app: Router, sim: Arc<Shared>) {
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually fd exhaustion: back off instead of spinning.
                    tracing::warn!(error = %e, "simulator accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = sim.stopping() => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let app = app.clone();
            async move {
                let resp = app
                    .oneshot(req)
                    .await
                    .unwrap_or_else(|never: Infallible| match never {});
                // A service error makes hyper drop the connection without writing anything.
                if resp.extensions().get::<CloseConnection>().is_some() {
                    Err(CloseConnection)
                } else {
                    Ok(resp)
                }
            }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
}
