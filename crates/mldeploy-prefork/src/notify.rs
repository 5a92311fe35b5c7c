//! systemd's notification protocol (`sd_notify`): datagrams such as `READY=1` or `STATUS=...`
//! sent to the socket named by `NOTIFY_SOCKET`, a file path or, with a leading `@`, an abstract
//! socket name. Without `NOTIFY_SOCKET` there is nothing to notify and nothing is sent.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// A connection to systemd's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
}

impl Notifier {
    /// A notifier for `NOTIFY_SOCKET`, if set. The variable is removed from the environment so
    /// that worker processes (and anything they start) do not notify in the service's name;
    /// call this while the process has a single thread.
    pub fn from_env() -> io::Result<Option<Notifier>> {
        let Some(path) = std::env::var_os(NOTIFY_SOCKET) else {
            return Ok(None);
        };
        std::env::remove_var(NOTIFY_SOCKET);
        if path.is_empty() {
            return Ok(None);
        }
        Notifier::new(&path).map(Some)
    }

    /// A notifier for a socket path, or an abstract name written `@name`.
    pub fn new(path: &OsStr) -> io::Result<Notifier> {
        let bytes = path.as_bytes();
        let address = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(path)?,
        };
        let socket = UnixDatagram::unbound()?;
        // A receiver that does not read must never block the master: a full queue fails the
        // send (WouldBlock) instead.
        socket.set_nonblocking(true)?;
        Ok(Notifier { socket, address })
    }

    /// Send one state message, e.g. `"READY=1\nSTATUS=4 workers serving"`. Never blocks: if the
    /// receiver's queue is full, the message is dropped with a `WouldBlock` error.
    pub fn send(&self, state: &str) -> io::Result<()> {
        self.socket.send_to_addr(state.as_bytes(), &self.address)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn receive(socket: &UnixDatagram) -> String {
        socket.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_to_a_socket_path() {
        let path = std::env::temp_dir().join(format!("prefork-notify-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).expect("bind");
        let notifier = Notifier::new(path.as_os_str()).expect("notifier");
        notifier.send("READY=1\nSTATUS=ok").expect("send");
        assert_eq!(receive(&listener), "READY=1\nSTATUS=ok");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn sends_to_an_abstract_name() {
        let name = format!("prefork-notify-test-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).expect("address");
        let listener = UnixDatagram::bind_addr(&address).expect("bind");
        let notifier = Notifier::new(OsStr::new(&format!("@{name}"))).expect("notifier");
        notifier.send("STOPPING=1").expect("send");
        assert_eq!(receive(&listener), "STOPPING=1");
    }

    #[test]
    fn a_receiver_that_does_not_read_does_not_block_the_sender() {
        let name = format!("prefork-notify-full-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).expect("address");
        let _listener = UnixDatagram::bind_addr(&address).expect("bind");
        let notifier = Notifier::new(OsStr::new(&format!("@{name}"))).expect("notifier");
        let results: Vec<io::Result<()>> = (0..10_000).map(|_| notifier.send("STATUS=x")).collect();
        let refused =
            results.iter().filter(|r| r.as_ref().is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock));
        assert!(refused.count() > 0, "the queue filled up and later sends were dropped, not blocked");
    }
}
