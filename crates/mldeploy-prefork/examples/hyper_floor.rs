//! The floor of hyper on this machine: the pre-fork supervisor of this crate, and in each
//! worker a tokio runtime serving HTTP/1.1 with hyper and nothing of mldeploy's own (no
//! router, metrics, timeouts, request ids or connection board). Every request's body is read
//! whole and answered `200 {"ok":true}`, as nginx answers in the benchmarks.
//!
//! `hyper_floor PORT WORKERS THREADS`, on 127.0.0.1; run beside nginx and mldeploy by
//! `scripts/bench/hot_path.sh`. TERM stops it (exit 0).

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use mldeploy_prefork::{exit_code, App, SupervisorConfig, Worker};
use slog::{o, Drain};

struct Floor {
    workers: usize,
    threads: usize,
}

impl App for Floor {
    type Error = std::convert::Infallible;

    fn prepare(&mut self, _reload: bool) -> Result<SupervisorConfig, Self::Error> {
        Ok(SupervisorConfig {
            workers: self.workers,
            threads: self.threads,
            timeout: None,
            graceful_timeout: Duration::from_secs(5),
            max_requests: 0,
            max_requests_jitter: 0,
            pidfile: None,
            user: None,
            group: None,
        })
    }

    fn run_worker(&self, worker: Worker) -> i32 {
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.threads)
            .enable_io()
            .enable_time()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                eprintln!("hyper_floor: no runtime: {e}");
                return exit_code::BOOT_FAILURE;
            }
        };
        for listener in worker.listeners {
            let accepting = listener
                .set_nonblocking(true)
                .and_then(|()| runtime.block_on(async { tokio::net::TcpListener::from_std(listener) }));
            match accepting {
                Ok(listener) => {
                    runtime.spawn(accept_loop(listener));
                }
                Err(e) => {
                    eprintln!("hyper_floor: listener unusable: {e}");
                    return exit_code::BOOT_FAILURE;
                }
            }
        }
        let handle = worker.handle.clone();
        runtime.spawn(async move {
            loop {
                handle.heartbeat();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        worker.handle.ready();
        worker.handle.wait_stop();
        runtime.shutdown_background();
        exit_code::OK
    }
}

async fn accept_loop(listener: tokio::net::TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of descriptors, or a connection reset before it was accepted: wait a little
            // rather than spin on the error.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the body whole, as a prediction must; its bytes are dropped.
    let _ = req.into_body().collect().await;
    let mut response = Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    Ok(response)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match &args[..] {
        [port, workers, threads] => match (port.parse::<u16>(), workers.parse::<usize>(), threads.parse()) {
            (Ok(port), Ok(workers), Ok(threads)) if workers > 0 && threads > 0 => {
                Some((port, workers, threads))
            }
            _ => None,
        },
        _ => None,
    };
    let Some((port, workers, threads)) = parsed else {
        eprintln!("usage: hyper_floor PORT WORKERS THREADS (a port number, workers and threads >= 1)");
        return ExitCode::FAILURE;
    };
    let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
    let drain = slog_term::FullFormat::new(decorator).build().filter_level(slog::Level::Warning).fuse();
    let log = slog::Logger::root(drain, o!());
    let listeners = match mldeploy_prefork::bind_listeners(&[SocketAddr::from(([127, 0, 0, 1], port))], 1024)
    {
        Ok(listeners) => listeners,
        Err(e) => {
            eprintln!("hyper_floor: cannot bind 127.0.0.1:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = mldeploy_prefork::run(Floor { workers, threads }, listeners, log);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
