//! Optional per-server pty: a tty path for guests/tests that want one; `context.rs` serves cepko
//! on it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

/// An open pty pair whose master side is not yet registered with tokio (see
/// [`Pty::into_stream`]). This module only provides the byte stream; what is served on it
/// (cepko) is the caller's business, so the pty knows nothing of the emulator.
pub struct Pty {
    master: std::fs::File,
    slave: OwnedFd,
}

/// Open a pty pair and return it with the slave's path. The slave is put in raw mode without
/// echo so a client sees exactly the bytes we send.
pub fn open() -> std::io::Result<(Pty, PathBuf)> {
    use nix::pty::openpty;
    use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
    let pty = openpty(None, None).map_err(std::io::Error::from)?;
    let path = nix::unistd::ttyname(&pty.slave).map_err(std::io::Error::from)?;
    if let Ok(mut t) = tcgetattr(&pty.slave) {
        cfmakeraw(&mut t);
        let _ = tcsetattr(&pty.slave, SetArg::TCSANOW, &t);
    }
    let master: OwnedFd = pty.master;
    set_nonblocking(master.as_raw_fd())?;
    Ok((
        Pty {
            master: std::fs::File::from(master),
            slave: pty.slave,
        },
        path,
    ))
}

impl Pty {
    /// The master side as an async byte stream. Must run inside a tokio runtime.
    pub fn into_stream(self) -> std::io::Result<PtyStream> {
        // `new` is deprecated for types that do not own their fd; `File` does own it.
        #[allow(deprecated)]
        let fd = tokio::io::unix::AsyncFd::new(self.master)?;
        Ok(PtyStream {
            fd,
            _slave: self.slave,
        })
    }
}

fn set_nonblocking(fd: i32) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    let mut f = OFlag::from_bits_truncate(flags);
    f.insert(OFlag::O_NONBLOCK);
    fcntl(fd, FcntlArg::F_SETFL(f)).map_err(std::io::Error::from)?;
    Ok(())
}

/// The master side of a pty, readable and writable with tokio.
pub struct PtyStream {
    fd: tokio::io::unix::AsyncFd<std::fs::File>,
    /// Kept open for the stream's lifetime: otherwise reads on the master fail with EIO
    /// whenever no client has the slave open.
    _slave: OwnedFd,
}

impl tokio::io::AsyncRead for PtyStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::io::Read;
        loop {
            let mut guard = match self.fd.poll_read_ready(cx) {
                std::task::Poll::Ready(Ok(g)) => g,
                std::task::Poll::Ready(Err(e)) => return std::task::Poll::Ready(Err(e)),
                std::task::Poll::Pending => return std::task::Poll::Pending,
            };
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|inner| inner.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return std::task::Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return std::task::Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl tokio::io::AsyncWrite for PtyStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::io::Write;
        loop {
            let mut guard = match self.fd.poll_write_ready(cx) {
                std::task::Poll::Ready(Ok(g)) => g,
                std::task::Poll::Ready(Err(e)) => return std::task::Poll::Ready(Err(e)),
                std::task::Poll::Pending => return std::task::Poll::Pending,
            };
            match guard.try_io(|inner| inner.get_ref().write(data)) {
                Ok(r) => return std::task::Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
