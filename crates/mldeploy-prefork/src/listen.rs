//! The listening sockets: bound once by the master (IPv4 and IPv6, `SO_REUSEADDR`, IPv6 sockets
//! IPv6-only so `0.0.0.0` and `[::]` can share a port) or inherited from systemd socket
//! activation (`LISTEN_PID` naming this process, `LISTEN_FDS` sockets from fd 3 on), in which
//! case the configured addresses are ignored.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;

use nix::sys::socket::{self, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage};

use crate::sys;

fn context(what: String) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Bind one listening TCP socket.
pub(crate) fn bind(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let attempt = || -> io::Result<TcpListener> {
        let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        if addr.is_ipv6() {
            socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
        }
        socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
        let backlog = backlog.clamp(1, Backlog::MAXCONN.into());
        socket::listen(&fd, Backlog::new(backlog)?)?;
        Ok(TcpListener::from(fd))
    };
    attempt().map_err(context(format!("cannot listen on {addr}")))
}

/// The sockets systemd passed, if it passed any to this process. The `LISTEN_*` variables are
/// removed from the environment so the sockets are taken once and no child sees them.
pub(crate) fn from_systemd() -> io::Result<Option<Vec<TcpListener>>> {
    let Some(pid) = std::env::var_os("LISTEN_PID") else {
        return Ok(None);
    };
    if pid.to_str().and_then(|pid| pid.parse::<u32>().ok()) != Some(std::process::id()) {
        // Meant for another process (e.g. our parent).
        return Ok(None);
    }
    let count = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse::<i32>().ok());
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(name);
    }
    let count = count
        .filter(|n| (0..=1024).contains(n))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "LISTEN_FDS is not a small number"))?;
    if count == 0 {
        return Ok(None);
    }
    let listeners = (sys::LISTEN_FDS_START..sys::LISTEN_FDS_START + count)
        .map(sys::inherited_listener)
        .collect::<io::Result<Vec<_>>>()
        .map_err(context("systemd socket activation".into()))?;
    Ok(Some(listeners))
}

/// `listener` (non-blocking) registered with the current tokio runtime for read readiness, so
/// that a worker can see a connection waiting before it decides to accept it (see
/// [`crate::Seat`]). Must be called within a tokio runtime.
pub fn watch(listener: TcpListener) -> io::Result<tokio::io::unix::AsyncFd<TcpListener>> {
    listener.set_nonblocking(true)?;
    // SAFETY: a `TcpListener` owns its descriptor: it stays open and is the same one for as long
    // as the `AsyncFd` owns the listener, and `as_raw_fd` always returns it.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(listener, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn binds_ipv4_and_ipv6_loopback() {
        let v4 = bind("127.0.0.1:0".parse().expect("addr"), 16).expect("bind v4");
        let port = v4.local_addr().expect("addr").port();
        let v6 = match bind(SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], port)), 16) {
            Ok(v6) => Some(v6),
            // A machine without IPv6 still has to pass the IPv4 half.
            Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => None,
            Err(e) => panic!("bind v6 on the same port: {e}"),
        };
        let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (mut served, _) = v4.accept().expect("accept");
        client.write_all(b"x").expect("write");
        let mut byte = [0u8; 1];
        served.read_exact(&mut byte).expect("read");
        assert_eq!(&byte, b"x");
        if let Some(v6) = v6 {
            assert!(v6.local_addr().expect("addr").is_ipv6());
        }
    }

    #[test]
    fn a_taken_port_names_the_address() {
        let taken = bind("127.0.0.1:0".parse().expect("addr"), 16).expect("bind");
        let addr = taken.local_addr().expect("addr");
        let err = bind(addr, 16).expect_err("port in use");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
