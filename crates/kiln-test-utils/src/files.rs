//! A web server for one file on loopback, as a site's image server is to a BMC: it answers
//! GET for its path with the file, 404 for anything else, and counts the GETs it served.

use std::io::{BufRead as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub struct OneFileServer {
    /// `http://127.0.0.1:PORT/PATH`
    pub url: String,
    served: Arc<AtomicUsize>,
    stopping: Arc<AtomicBool>,
    address: std::net::SocketAddr,
}

impl Drop for OneFileServer {
    /// Stops the serving thread, which closes the listener: a connection wakes its accept.
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(self.address);
    }
}

impl OneFileServer {
    pub fn start(path: &'static str, body: &'static [u8]) -> OneFileServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}{path}", listener.local_addr().unwrap());
        let address = listener.local_addr().unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        let (counter, stop) = (served.clone(), stopping.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { return };
                let mut reader = std::io::BufReader::new(stream);
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                // The rest of the head; the requests carry no body.
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|read| read > 2) {
                    line.clear();
                }
                let mut stream = reader.into_inner();
                if request_line.starts_with(&format!("GET {path} ")) {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                    let _ = stream.write_all(body);
                } else {
                    let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                }
            }
        });
        OneFileServer { url, served, stopping, address }
    }

    /// GETs of the file answered so far.
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}
