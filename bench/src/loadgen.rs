//! In-process traffic for the suites: a TCP echo for request/response latency, a small HTTP
//! server for the ingress backends, and a UDP blaster for packet rates. Sockets are created on
//! a thread inside a lab namespace (`lab::in_netns`) and keep that namespace for life, so the
//! work itself runs on ordinary threads.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// A server running on its own threads until dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    listener: Arc<TcpListener>,
    workers: Vec<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // On Linux, shutting down a listening socket makes every blocked accept() return an
        // error; workers serving a connection see the flag within their read timeout.
        // SAFETY: shutdown on a descriptor the Arc keeps open; no memory is touched.
        unsafe {
            libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR);
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// What a server does with each accepted connection.
#[derive(Clone, Copy)]
pub enum Protocol {
    /// Echo every read back (request/response latency).
    Echo,
    /// Answer HTTP/1.1 GETs with a small fixed body, honouring keep-alive and close.
    Http,
}

/// Threads serving connections; one connection occupies a thread until it closes, so this
/// bounds the concurrent connections a server handles (the suites use at most 32).
const SERVER_THREADS: usize = 64;

/// Starts a server on `addr` inside network namespace `netns`: a fixed pool of threads, each
/// blocked in accept and then serving one connection at a time, so no thread is created per
/// connection and connection-per-request rates measure the network path.
pub fn serve(netns: &str, addr: SocketAddr, protocol: Protocol) -> Result<Server> {
    let listener = lab::in_netns(netns, move || TcpListener::bind(addr))?
        .with_context(|| format!("binding {addr} in {netns}"))?;
    let listener = Arc::new(listener);
    let stop = Arc::new(AtomicBool::new(false));
    let workers = (0..SERVER_THREADS)
        .map(|_| {
            let (listener, stop) = (Arc::clone(&listener), Arc::clone(&stop));
            std::thread::spawn(move || {
                // Blocking accept costs nothing while idle; Drop wakes it with shutdown().
                while let Ok((stream, _)) = listener.accept() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let _ = stream.set_nodelay(true);
                    let _ = match protocol {
                        Protocol::Echo => echo(stream, &stop),
                        Protocol::Http => http(stream, &stop),
                    };
                }
            })
        })
        .collect();
    Ok(Server {
        stop,
        listener,
        workers,
    })
}

fn echo(mut stream: TcpStream, stop: &AtomicBool) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => stream.write_all(&buf[..n])?,
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

const HTTP_BODY: &str = "mesh bench backend\n";

fn http(mut stream: TcpStream, stop: &AtomicBool) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut buf = [0u8; 8192];
    let mut pending = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(err) => return Err(err),
        };
        pending.extend_from_slice(&buf[..n]);
        // Answer every complete request in the buffer (wrk pipelines nothing, but be exact).
        while let Some(end) = find(&pending, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
            pending.drain(..end + 4);
            let close = head.contains("\r\nconnection: close");
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n{}\r\n{HTTP_BODY}",
                HTTP_BODY.len(),
                if close { "Connection: close\r\n" } else { "" }
            );
            stream.write_all(response.as_bytes())?;
            if close {
                return Ok(());
            }
        }
    }
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Round-trip times, in microseconds, of `count` exchanges of `size` bytes over one TCP
/// connection from namespace `netns` to an echo server at `target`.
pub fn tcp_rr(netns: &str, target: SocketAddr, count: usize, size: usize) -> Result<Vec<f64>> {
    let mut stream = lab::in_netns(netns, move || {
        TcpStream::connect_timeout(&target, Duration::from_secs(3))
    })?
    .with_context(|| format!("connecting to {target} from {netns}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    let request = vec![0x5au8; size];
    let mut reply = vec![0u8; size];
    // Warm up: caches, ARP, the server thread.
    for _ in 0..count.min(100) / 10 + 1 {
        stream.write_all(&request)?;
        stream.read_exact(&mut reply)?;
    }
    let mut rtts = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        stream.write_all(&request)?;
        stream.read_exact(&mut reply)?;
        rtts.push(start.elapsed().as_secs_f64() * 1e6);
    }
    Ok(rtts)
}

/// Sends 60-byte frames (18 bytes of UDP payload) from `netns` to `target` as fast as
/// `threads` threads can for `duration`, in batches with sendmmsg. Returns how many were sent.
pub fn udp_blast(
    netns: &str,
    target: SocketAddr,
    duration: Duration,
    threads: usize,
) -> Result<u64> {
    let senders: Vec<_> = (0..threads)
        .map(|_| {
            let netns = netns.to_string();
            std::thread::spawn(move || udp_blast_one(&netns, target, duration))
        })
        .collect();
    let mut sent = 0;
    for sender in senders {
        sent += sender
            .join()
            .map_err(|_| anyhow::anyhow!("UDP sender thread panicked"))??;
    }
    Ok(sent)
}

fn udp_blast_one(netns: &str, target: SocketAddr, duration: Duration) -> Result<u64> {
    let socket = lab::in_netns(netns, || UdpSocket::bind("0.0.0.0:0"))?
        .context("binding the UDP blaster")?;
    socket.connect(target)?;
    const BATCH: usize = 64;
    let payload = [0xa5u8; 18];
    let mut iov: Vec<libc::iovec> = (0..BATCH)
        .map(|_| libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        })
        .collect();
    // SAFETY: mmsghdr is plain data; zeroed is a valid empty header that we fill below.
    let mut headers: Vec<libc::mmsghdr> =
        (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (header, iov) in headers.iter_mut().zip(iov.iter_mut()) {
        header.msg_hdr.msg_iov = iov;
        header.msg_hdr.msg_iovlen = 1;
    }
    let deadline = Instant::now() + duration;
    let mut sent = 0u64;
    while Instant::now() < deadline {
        // SAFETY: headers point at iovecs and a payload that outlive the call; the socket is
        // connected, so no destination address is needed.
        let n =
            unsafe { libc::sendmmsg(socket.as_raw_fd(), headers.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent += n as u64;
        }
    }
    Ok(sent)
}

/// A UDP sink counting every datagram it receives, on its own thread until dropped.
pub struct UdpSink {
    received: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
}

impl UdpSink {
    /// Datagrams received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Starts a UDP sink on `addr` inside network namespace `netns` (a name under /run/netns, or an
/// absolute path such as a task's pinned namespace): one thread draining the socket with
/// recvmmsg in batches of 64 and counting datagrams, so the count is what reached a socket.
pub fn udp_sink(netns: &str, addr: SocketAddr) -> Result<UdpSink> {
    let socket = lab::in_netns(netns, move || UdpSocket::bind(addr))?
        .with_context(|| format!("binding UDP {addr} in {netns}"))?;
    // A deep receive queue, so bursts are not lost to a briefly descheduled thread.
    let size: libc::c_int = 16 << 20;
    // SAFETY: setsockopt with a valid descriptor and a pointer to a c_int of the given size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (received, stop) = (Arc::clone(&received), Arc::clone(&stop));
        std::thread::spawn(move || {
            const BATCH: usize = 64;
            let mut buffers = vec![[0u8; 64]; BATCH];
            let mut iov: Vec<libc::iovec> = buffers
                .iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                })
                .collect();
            // SAFETY: mmsghdr is plain data; zeroed is a valid empty header filled below.
            let mut headers: Vec<libc::mmsghdr> =
                (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
            for (header, iov) in headers.iter_mut().zip(iov.iter_mut()) {
                header.msg_hdr.msg_iov = iov;
                header.msg_hdr.msg_iovlen = 1;
            }
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: headers point at iovecs and buffers that outlive the call. With
                // MSG_WAITFORONE it blocks (up to SO_RCVTIMEO) for the first datagram only.
                let n = unsafe {
                    libc::recvmmsg(
                        socket.as_raw_fd(),
                        headers.as_mut_ptr(),
                        BATCH as u32,
                        libc::MSG_WAITFORONE,
                        std::ptr::null_mut(),
                    )
                };
                if n > 0 {
                    received.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        })
    };
    Ok(UdpSink {
        received,
        stop,
        worker: Some(worker),
    })
}

/// Whether `GET /` to `target` from namespace `netns` answers 200.
pub fn http_ok(netns: &str, target: SocketAddr) -> bool {
    lab::in_netns(netns, move || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        stream.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        Ok(answer.starts_with(b"HTTP/1.1 200"))
    })
    .ok()
    .and_then(Result::ok)
    .unwrap_or(false)
}

/// Sends `count` small datagrams from namespace `netns` to `target`, each from a fresh socket.
pub fn udp_probe(netns: &str, target: SocketAddr, count: usize) -> Result<()> {
    lab::in_netns(netns, move || -> std::io::Result<()> {
        for _ in 0..count {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.send_to(b"probe", target)?;
        }
        Ok(())
    })??;
    Ok(())
}
