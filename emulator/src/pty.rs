//! Optional per-server pty answering cepko (for guests/tests that want a tty path).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Weak;
use tokio::task::JoinHandle;

use crate::app::App;

/// Open a pty pair; serve cepko on the master side; return the slave's path. The slave is put in
/// raw mode without echo so a client sees exactly the bytes we send.
pub fn open(app: Weak<App>, uuid: String) -> std::io::Result<(JoinHandle<()>, PathBuf)> {
    use nix::pty::openpty;
    use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
    let pty = openpty(None, None).map_err(std::io::Error::from)?;
    let path = nix::unistd::ttyname(&pty.slave).map_err(std::io::Error::from)?;
    if let Ok(mut t) = tcgetattr(&pty.slave) {
        cfmakeraw(&mut t);
        let _ = tcsetattr(&pty.slave, SetArg::TCSANOW, &t);
    }
    let master: OwnedFd = pty.master;
    // Keep the slave open for the pty's lifetime: otherwise reads on the master fail with EIO
    // whenever no client has it open.
    let slave: OwnedFd = pty.slave;
    set_nonblocking(master.as_raw_fd())?;
    let file = std::fs::File::from(master);
    let task = tokio::spawn(async move {
        let _slave = slave;
        // `new` is deprecated for types that do not own their fd; `File` does own it.
        #[allow(deprecated)]
        let registered = tokio::io::unix::AsyncFd::new(file);
        let stream = match registered {
            Ok(fd) => PtyStream { fd },
            Err(e) => {
                tracing::warn!(error = %e, "cannot register the pty with tokio");
                return;
            }
        };
        crate::context::serve_stream(app, uuid, stream).await;
    });
    Ok((task, path))
}

fn set_nonblocking(fd: i32) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    let mut f = OFlag::from_bits_truncate(flags);
    f.insert(OFlag::O_NONBLOCK);
    fcntl(fd, FcntlArg::F_SETFL(f)).map_err(std::io::Error::from)?;
    Ok(())
}

struct PtyStream {
    fd: tokio::io::unix::AsyncFd<std::fs::File>,
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
