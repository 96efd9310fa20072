//! A TCP relay on loopback in front of a real server, which can hold a download mid-way: while
//! `hold` is on, a connection that has carried `after` bytes back to its client carries no more
//! (the client sees a stalled transfer, as from a slow or broken network) until the relay stops.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub struct Relay {
    pub addr: SocketAddr,
    hold: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Relay to `to`, holding every connection after `after` bytes back while `hold` is on.
    pub fn start(to: SocketAddr, after: u64) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("relay addr");
        let hold = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (Arc::clone(&hold), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut pipes = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let Ok(server) = TcpStream::connect(to) else {
                            continue;
                        };
                        pipes.push(pipe(&client, &server, None, &s));
                        pipes.push(pipe(&server, &client, Some((after, Arc::clone(&h))), &s));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => break,
                }
            }
            for p in pipes {
                let _ = p.join();
            }
        });
        Relay {
            addr,
            hold,
            stop,
            thread: Some(thread),
        }
    }

    /// New bytes flow freely from now on (held connections stay held: their clients gave up).
    pub fn release(&self) {
        self.hold.store(false, Ordering::Relaxed);
    }
}

/// Copy `from` to `to` on a thread; with `limit`, stop forwarding after that many bytes while
/// its flag is on.
fn pipe(
    from: &TcpStream,
    to: &TcpStream,
    limit: Option<(u64, Arc<AtomicBool>)>,
    stop: &Arc<AtomicBool>,
) -> JoinHandle<()> {
    let (mut from, mut to) = (
        from.try_clone().expect("clone"),
        to.try_clone().expect("clone"),
    );
    let stop = Arc::clone(stop);
    std::thread::spawn(move || {
        let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
        let mut sent = 0u64;
        let mut buf = [0u8; 16 * 1024];
        let mut held = false;
        while !stop.load(Ordering::Relaxed) {
            if held {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue
                }
                Err(_) => break,
            };
            if let Some((after, hold)) = &limit {
                if hold.load(Ordering::Relaxed) && sent + n as u64 > *after {
                    // Up to the limit, then nothing more on this connection.
                    let part = (*after - sent.min(*after)) as usize;
                    let _ = to.write_all(&buf[..part]);
                    held = true;
                    continue;
                }
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            sent += n as u64;
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    })
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
