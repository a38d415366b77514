//! Hostile input at a real cluster (1 manager, 1 worker): a task floods its embedded DNS server
//! while a second client in the same task namespace asks a few questions; an oversized request
//! line reaches meshd's control socket; oversized frames reach the cluster port (TCP 2377) with
//! a member's certificate and without one. Each is refused or limited, counted or logged, and
//! the cluster keeps answering with its state intact.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use dataplane::overlay::netns::Netns;
use lab::LabSpec;
use netns_tests::{alive, report, until_ok, TestLab};

const IMAGE: &str = "mesh-test:latest";
const HTTPD: &[&str] = &["httpd", "-f", "-p", "80", "-h", "/www"];
/// The DNS limit's numbers (dataplane::dns::limit): per-source sustained rate and burst.
const DNS_RATE: f64 = dataplane::dns::limit::QUERIES_PER_SEC;
const DNS_BURST: f64 = dataplane::dns::limit::BURST;
const FLOOD_QUERIES: usize = 40_000;
const MAX_REQUEST_BYTES: usize = 1024 * 1024;

fn ok(lab: &TestLab, args: &[&str]) -> String {
    lab.meshctl_ok("m1", args)
}

/// A DNS query for `name` A IN, with ID `id`.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

const DNS: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11)), 53);

/// Inside the task's namespace: one socket on 127.0.0.1 sends `FLOOD_QUERIES` queries in a
/// tight loop (a reader counts answers), while a second client on 127.0.0.2 asks 20 questions
/// one at a time with a stub's retries (3 tries, 1 s each). Returns (sent, flood answered,
/// polite answered, seconds from the start to the last flood answer).
fn flood_and_ask() -> std::io::Result<(usize, usize, usize, f64)> {
    let flooder = UdpSocket::bind("127.0.0.1:0")?;
    flooder.set_read_timeout(Some(Duration::from_millis(1000)))?;
    let reader = flooder.try_clone()?;
    // Counts answers and notes when the last came: the server answered every one by then, so
    // its bucket cannot have earned more than the burst plus the rate over that time.
    let counter = std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        let mut answered = 0;
        let mut last = Instant::now();
        while reader.recv_from(&mut buf).is_ok() {
            answered += 1;
            last = Instant::now();
        }
        (answered, last)
    });
    let polite = UdpSocket::bind("127.0.0.2:0")?;
    polite.set_read_timeout(Some(Duration::from_secs(1)))?;
    let start = Instant::now();
    let sender = std::thread::spawn(move || {
        (0..FLOOD_QUERIES)
            .filter(|i| flooder.send_to(&query(*i as u16, "web"), DNS).is_ok())
            .count()
    });
    let mut polite_answered = 0;
    for i in 0..20u16 {
        for _try in 0..3 {
            polite.send_to(&query(0xA000 + i, "web"), DNS)?;
            let mut buf = [0u8; 1500];
            if polite.recv_from(&mut buf).is_ok() {
                polite_answered += 1;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = sender.join().expect("flood sender");
    let (answered, last) = counter.join().expect("flood reader");
    let seconds = last.saturating_duration_since(start).as_secs_f64();
    Ok((sent, answered, polite_answered, seconds))
}

/// The running task of `service`: (task ID, host).
fn running_task(lab: &TestLab, network: &str, service: &str) -> (String, String) {
    until_ok(Duration::from_secs(60), || {
        lab.running_endpoints("m1", network, service)
            .into_iter()
            .next()
            .map(|e| (e.task_id, e.node))
            .ok_or_else(|| "no running task".to_string())
    })
    .unwrap_or_else(|e| panic!("{service} never ran: {e}"))
    .0
}

/// Sends one request line of `size` bytes to `host`'s control socket and returns meshd's
/// answer line (the write may fail midway: meshd answers and closes before reading it all).
fn oversized_line(lab: &TestLab, host: &str, size: usize) -> String {
    let path = lab.lab().files(host).unwrap().control_socket();
    let stream = UnixStream::connect(&path).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut line = vec![b'x'; size];
        line.push(b'\n');
        let _ = writer.write_all(&line);
    });
    let mut answer = String::new();
    let _ = BufReader::new(stream).read_line(&mut answer);
    let _ = sender.join();
    answer
}

/// A raw frame header announcing `len` bytes, then `body`, to m1's cluster port over TLS from
/// `from`, with `from`'s node certificate or none; the server's answer as openssl prints it.
fn raw_frame(lab: &TestLab, from: &str, with_cert: bool, len: u32, body: usize) -> String {
    let target = format!("{}:2377", lab.addr("m1"));
    let cluster = lab.lab().files(from).unwrap().state_dir().join("cluster");
    let header: String = len
        .to_be_bytes()
        .iter()
        .map(|b| format!("\\{b:03o}"))
        .collect();
    let mut script = format!(
        "(printf '{header}'; head -c {body} /dev/zero; sleep 2) | timeout 20 openssl s_client \
         -quiet -connect {target}"
    );
    if with_cert {
        script.push_str(&format!(
            " -cert {}/node.pem -key {}/node.key",
            cluster.display(),
            cluster.display()
        ));
    }
    script.push_str(" 2>/dev/null");
    let out = lab.lab().output(from, &["sh", "-c", &script]).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The cluster still answers and holds what it held: both nodes ready, the service with its
/// task, and both daemons the processes they were.
fn intact(lab: &TestLab, pids: &[Option<i32>]) -> Result<String, String> {
    let nodes = lab.meshctl("m1", &["node", "ls"])?;
    let ready = nodes.lines().filter(|l| l.contains("Ready")).count();
    let services = lab.meshctl("m1", &["service", "ls"])?;
    let same_pids = ["m1", "w1"]
        .iter()
        .zip(pids)
        .all(|(h, pid)| lab.status_of(h).daemon_pid == *pid && pid.is_some_and(alive));
    if ready == 2 && services.contains("web") && same_pids {
        Ok(format!(
            "{ready} nodes ready, service web listed, daemons not restarted"
        ))
    } else {
        Err(format!(
            "nodes:\n{nodes}\nservices:\n{services}\nsame pids: {same_pids}"
        ))
    }
}

#[test]
fn floods_and_oversized_requests_are_refused_and_the_cluster_carries_on() {
    let lab = TestLab::up("hostile", |spec: &mut LabSpec| {
        spec.managers = 1;
        spec.workers = 1;
    });
    ok(&lab, &["network", "create", "--driver", "overlay", "front"]);
    let mut create = vec![
        "service",
        "create",
        "--name",
        "web",
        "--network",
        "front",
        IMAGE,
    ];
    create.extend_from_slice(HTTPD);
    ok(&lab, &create);
    let (task, host) = running_task(&lab, "front", "web");
    let pids: Vec<Option<i32>> = ["m1", "w1"]
        .iter()
        .map(|h| lab.status_of(h).daemon_pid)
        .collect();

    // DNS query flood from inside the task.
    let netns_path = lab
        .lab()
        .files(&host)
        .unwrap()
        .state_dir()
        .join("netns")
        .join(&task);
    let netns = Netns::open_pinned(&netns_path)
        .unwrap()
        .expect("task namespace");
    let (sent, answered, polite, seconds) = netns.run(flood_and_ask).unwrap();
    let allowed = (DNS_BURST + DNS_RATE * seconds).ceil() as usize;
    let log = lab.lab().files(&host).unwrap().log();
    let logged = until_ok(Duration::from_secs(15), || {
        let text = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
        text.lines()
            .rev()
            .find(|l| l.contains("DNS queries over the per-client rate dropped"))
            .map(str::to_string)
            .ok_or_else(|| "not logged".to_string())
    });
    let passed = polite == 20 && answered <= allowed && answered < sent && logged.is_ok();
    assert!(
        report::verdict(
            "hostile input",
            "DNS query flood",
            passed,
            &format!(
                "flood of {sent} queries from one client: {answered} answered within {seconds:.1} s \
                 (limit {DNS_RATE}/s + burst {DNS_BURST} allows {allowed}), the rest dropped; \
                 a second client got {polite} of 20 answered; meshd logged the drops: {}",
                logged.is_ok()
            )
        ),
        "DNS flood: sent {sent}, answered {answered} (allowed {allowed}), second client {polite} \
         of 20; log: {logged:?}"
    );

    // An oversized request line on the control socket, on both hosts.
    for h in ["m1", "w1"] {
        let answer = oversized_line(&lab, h, 4 * MAX_REQUEST_BYTES);
        let refused = answer.contains("larger than 1048576 bytes refused");
        let state = intact(&lab, &pids);
        assert!(
            report::verdict(
                "hostile input",
                &format!("oversized control-socket request ({h})"),
                refused && state.is_ok(),
                &format!(
                    "a 4 MiB request line: {}; then {}",
                    if refused {
                        "refused with an error naming the 1 MiB limit"
                    } else {
                        "not refused"
                    },
                    state.clone().unwrap_or_else(|e| e)
                )
            ),
            "answer {answer:?}; {state:?}"
        );
    }

    // Oversized frames on the cluster port: announced past the limit (a member's certificate:
    // 32 MiB; none: 256 KiB). Only the header is sent: the answer comes on the header alone,
    // and a body meshd never reads would make its close a reset that can beat the answer.
    let cases = [
        (
            "member certificate, 4 GiB frame announced",
            true,
            u32::MAX,
            "limit 33554432 bytes",
        ),
        (
            "no certificate, 1 MiB frame announced",
            false,
            1 << 20,
            "limit 262144 bytes",
        ),
    ];
    for (what, with_cert, len, limit) in cases {
        let answer = raw_frame(&lab, "w1", with_cert, len, 0);
        let refused = answer.contains(&format!("frame of {len} bytes refused ({limit})"));
        let state = intact(&lab, &pids);
        assert!(
            report::verdict(
                "hostile input",
                &format!("oversized cluster RPC frame ({what})"),
                refused && state.is_ok(),
                &format!(
                    "{}; then {}",
                    if refused {
                        format!("refused on the length prefix ({limit})")
                    } else {
                        "not refused".into()
                    },
                    state.clone().unwrap_or_else(|e| e)
                )
            ),
            "answer {answer:?}; {state:?}"
        );
    }
    // DNS still answers the task after all of it.
    let answer = lab
        .in_task(
            &host,
            &task,
            &["dig", "@127.0.0.11", "+short", "+time=2", "web", "A"],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !answer.trim().is_empty(),
        "DNS stopped answering: {answer:?}"
    );
}
