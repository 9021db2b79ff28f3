//! A minimal webhook receiver for the tests: HTTP/1.1 on 127.0.0.1, each
//! POST read to its Content-Length and answered 204, and the signature
//! checked as a real receiver would (HMAC-SHA256 of the raw body).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::run::HANG;

/// One POST as the receiver saw it.
pub struct Hit {
    pub path: String,
    /// Names in lower case.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Hit {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// What a receiver does: HMAC-SHA256 of the raw body under the shared
    /// secret, compared with the header.
    pub fn signed_with(&self, secret: &[u8]) -> bool {
        let Some(header) = self.headers.get("x-cpuguard-signature") else {
            return false;
        };
        let Some(hex) = header.strip_prefix("sha256=") else {
            return false;
        };
        let Ok(expected) = hex::decode(hex) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(&self.body);
        mac.verify_slice(&expected).is_ok()
    }
}

/// A receiver on an ephemeral port of 127.0.0.1: its URL (ending in
/// `path`) and the requests it gets.
pub fn listen(path: &str) -> (String, mpsc::Receiver<Hit>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a port on 127.0.0.1");
    let url = format!("http://{}{path}", listener.local_addr().unwrap());
    (url, receive(listener))
}

/// The states of the events received so far, in order.
pub fn states_received(hits: &mpsc::Receiver<Hit>) -> Vec<String> {
    hits.try_iter()
        .map(|hit| hit.json()["state"].as_str().expect("a state").to_owned())
        .collect()
}

/// A minimal HTTP/1.1 receiver: each request is read to its Content-Length,
/// answered 204, and handed to the test.
pub fn receive(listener: TcpListener) -> mpsc::Receiver<Hit> {
    let (tx, hits) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            if let Some(hit) = read_request(&stream) {
                // Handed over before the answer: once cpuguard-run has its
                // answer, the test already has the event.
                if tx.send(hit).is_err() {
                    return;
                }
                let mut stream = stream;
                let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
            }
        }
    });
    hits
}

fn read_request(stream: &TcpStream) -> Option<Hit> {
    stream.set_read_timeout(Some(HANG)).ok()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut words = line.split_whitespace();
    assert_eq!(words.next(), Some("POST"), "{line}");
    let path = words.next()?.to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    let length: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Hit {
        path,
        headers,
        body,
    })
}
