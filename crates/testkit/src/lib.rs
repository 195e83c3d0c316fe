//! Test support for tests that run against the real servers `scripts/test`
//! starts. Each test gets its own topics and its own database, so tests run
//! in parallel without seeing each other's data.

pub mod browser;
pub mod cluster;
pub mod otlp;
pub mod stack;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use orderflow_platform::config::{KafkaArgs, TopicArgs};
use orderflow_platform::kafka::{Producer, Received};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::ClientConfig;
use rdkafka::Message;

/// Installs the services' telemetry once per test binary, so spans exist
/// and trace context travels in Kafka headers as in production.
pub fn telemetry() {
    static T: std::sync::OnceLock<orderflow_platform::telemetry::Telemetry> =
        std::sync::OnceLock::new();
    T.get_or_init(|| orderflow_platform::telemetry::init("orderflow-test").expect("telemetry"));
}

fn required(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: run the tests through scripts/test, which starts the real servers"
        )
    })
}

/// The helm binary scripts/test installed.
pub fn helm() -> String {
    required("ORDERFLOW_TEST_HELM")
}

/// Broker address of the shared test broker.
pub fn kafka() -> String {
    required("ORDERFLOW_TEST_KAFKA")
}

pub fn kafka_args(brokers: &str) -> KafkaArgs {
    KafkaArgs {
        brokers: brokers.to_owned(),
        extra: String::new().into(),
    }
}

/// `mongodb://host:port/<db>` on the shared test server.
pub fn mongo_url(db: &str) -> String {
    format!(
        "{}/{db}",
        required("ORDERFLOW_TEST_MONGO").trim_end_matches('/')
    )
}

pub fn redis_url() -> String {
    required("ORDERFLOW_TEST_REDIS")
}

/// A short unique name for topics, databases and groups.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A full set of pipeline topics private to one test.
pub fn topics(prefix: &str) -> TopicArgs {
    let p = unique(prefix);
    TopicArgs {
        orders: format!("{p}.orders"),
        validated: format!("{p}.orders.validated"),
        inventory: format!("{p}.inventory.events"),
        payment: format!("{p}.payment.events"),
        notifications: format!("{p}.notifications"),
        dlq: format!("{p}.orders.dlq"),
    }
}

/// Creates the topics on `brokers` with their default partition counts.
pub async fn create_topics(brokers: &str, topics: &TopicArgs) {
    let admin = orderflow_platform::kafka::admin(&kafka_args(brokers), "testkit").unwrap();
    orderflow_platform::kafka::ensure_topics(&admin, &topics.all(), 1)
        .await
        .expect("creating test topics");
}

pub async fn mongo_db(name: &str) -> mongodb::Database {
    let client = mongodb::Client::with_uri_str(mongo_url(name))
        .await
        .unwrap();
    client.database(name)
}

pub fn producer(brokers: &str) -> Producer {
    orderflow_platform::kafka::producer(&kafka_args(brokers), "testkit", Duration::from_secs(30))
        .unwrap()
}

/// Produces raw bytes to a topic and waits for the acknowledgement.
pub async fn produce(producer: &Producer, topic: &str, key: &str, payload: &[u8]) {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("producing a test message");
}

/// Produces `payload` with one header named by raw bytes: librdkafka lets
/// any producer name a header with bytes that are not UTF-8, which rdkafka's
/// `Header` (its key a `&str`) cannot express.
pub async fn produce_with_raw_header(
    producer: &Producer,
    topic: &str,
    key: &str,
    payload: &[u8],
    (name, value): (&[u8], &[u8]),
) {
    let headers = rdkafka::message::OwnedHeaders::new();
    // SAFETY: a `&BorrowedHeaders` is the address of librdkafka's own
    // `rd_kafka_headers_t` (rdkafka casts the native pointer to it), which
    // `headers` owns and nothing else uses yet; librdkafka copies the name
    // and the value.
    let err = unsafe {
        let native = headers.as_borrowed() as *const rdkafka::message::BorrowedHeaders
            as *mut rdkafka::bindings::rd_kafka_headers_t;
        rdkafka::bindings::rd_kafka_header_add(
            native,
            name.as_ptr().cast(),
            name.len() as isize,
            value.as_ptr().cast(),
            value.len() as isize,
        )
    };
    assert_eq!(
        err,
        rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
    );
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("producing a test message");
}

/// Total number of messages in a topic (Σ high − low watermarks). Right
/// after a topic is created Kafka may not yet name its partitions' leaders
/// (NotLeaderForPartition): that is asked again, for up to 15 s.
pub fn message_count(brokers: &str, topic: &str) -> i64 {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("watermarks"))
        .create()
        .unwrap();
    let count = || -> rdkafka::error::KafkaResult<i64> {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let mut total = 0;
        for p in md.topics()[0].partitions() {
            let (lo, hi) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            total += hi - lo;
        }
        Ok(total)
    };
    let started = Instant::now();
    loop {
        match count() {
            Ok(n) => return n,
            Err(e) if started.elapsed() < Duration::from_secs(15) => {
                eprintln!("message count of {topic}: {e}; asking again");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("message count of {topic}: {e}"),
        }
    }
}

/// Reads a topic from the beginning until `count` messages arrived or
/// `timeout` passed; returns what it got.
pub async fn consume(brokers: &str, topic: &str, count: usize, timeout: Duration) -> Vec<Received> {
    let consumer = subscribed(brokers, &unique("reader"), topic);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < count {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => out.push(Received::detach(&m, m.topic().into())),
            Ok(Err(e)) => panic!("consuming {topic}: {e}"),
            Err(_) => break,
        }
    }
    out
}

/// A member of `group` subscribed to `topic` from its start, committing
/// nothing by itself.
fn subscribed(brokers: &str, group: &str, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    consumer
}

/// Consumes `count` messages of `topic` as a member of `group`, committing
/// each one (synchronously) as it goes, then leaves the group. Returns how
/// many it consumed before `timeout`.
pub async fn consume_in_group(
    brokers: &str,
    topic: &str,
    group: &str,
    count: usize,
    timeout: Duration,
) -> usize {
    use rdkafka::consumer::CommitMode;
    let consumer = subscribed(brokers, group, topic);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut n = 0;
    while n < count {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => {
                consumer.commit_message(&m, CommitMode::Sync).unwrap();
                n += 1;
            }
            Ok(Err(e)) => panic!("consuming {topic}: {e}"),
            Err(_) => break,
        }
    }
    consumer.unsubscribe();
    n
}

pub fn header<'a>(msg: &'a Received, key: &str) -> Option<&'a str> {
    msg.header(key)
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if started.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `{url}/readyz` answers 2xx, for at most a minute; its
/// answer (`null` if it is not JSON).
pub async fn ready(url: &str) -> serde_json::Value {
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(60), url, || async {
        let r = http.get(format!("{url}/readyz")).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        Some(r.json().await.unwrap_or(serde_json::Value::Null))
    })
    .await
}

/// [`ready`], and the service answering is `service` (its `/readyz` names
/// it): a port taken by another process between choosing it and the
/// service's bind fails here, by name, instead of later as a timeout.
pub async fn ready_as(url: &str, service: &str) {
    let body = ready(url).await;
    assert_eq!(
        body["service"], service,
        "{url} is answered by another service: {body}"
    );
}

/// Another crate's binary of this workspace (`producer`, `consumer`, …):
/// scripts/test builds them all before the tests run.
pub fn binary(name: &str) -> std::path::PathBuf {
    // target/debug/deps/<test>-… → target/debug/<name>
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(path.exists(), "{} is not built", path.display());
    path
}

/// The `/metrics` text of the service at `base` (a panic if it does not
/// answer).
pub async fn scrape(client: &reqwest::Client, base: &str) -> String {
    client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .unwrap_or_else(|e| panic!("{base}/metrics: {e}"))
        .text()
        .await
        .unwrap()
}

/// A sample's value from a Prometheus text exposition: the first series
/// called `name` whose labels include each of `labels` (`key="value"`).
pub fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        (metric == name && labels.iter().all(|label| rest.contains(label)))
            .then(|| value.parse().ok())
            .flatten()
    })
}

/// Each thread of process `pid`: its name and its scheduler slice in
/// nanoseconds (`se.slice` in `/proc/PID/task/TID/sched`), for the tests of
/// the services that ask for a short one (ADR 0014, ADR 0018).
pub fn thread_slices(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let sched = std::fs::read_to_string(dir.join("sched")).unwrap_or_default();
        if let Some(slice) = sched
            .lines()
            .find(|l| l.starts_with("se.slice"))
            .and_then(|l| l.split(':').nth(1))
        {
            out.push((name.trim().to_owned(), slice.trim().parse().unwrap()));
        }
    }
    out
}

/// A port free now, below the kernel's ephemeral range (from 20 000 up to
/// where `ip_local_port_range` starts). A port from that range, which
/// binding port 0 gives, is also where client connections take their
/// source ports: until the service binds it, a connection to it (a
/// readiness probe) can get it as its own source port and connect to
/// itself, after which the service cannot bind it. Two tests flaked that
/// way in this suite (a restarted SMTP server, a console test's
/// analytics). Each call in a process walks on from a random start.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    // Where the ephemeral range starts, and the next candidate's offset.
    static PORTS: std::sync::OnceLock<(u32, AtomicU32)> = std::sync::OnceLock::new();
    let (high, next) = PORTS.get_or_init(|| {
        let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
            .filter(|start| *start > LOW + 1_000)
            .unwrap_or(32_768);
        let start = uuid::Uuid::new_v4().as_u128() % u128::from(high - LOW);
        (high, AtomicU32::new(start as u32))
    });
    let span = high - LOW;
    for _ in 0..span {
        let port = (LOW + next.fetch_add(1, Ordering::Relaxed) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port from {LOW} to {high}");
}

/// The first of `len` consecutive free ports, for a server that takes a run
/// of them (the control plane: the API server, then etcd's two). Checking
/// only the first let etcd find its port taken by some client's ephemeral
/// one now and then.
pub fn free_port_run(len: u16) -> u16 {
    loop {
        let first = free_port();
        let Some(last) = first.checked_add(len - 1) else {
            continue;
        };
        let rest: Vec<_> = (first + 1..=last)
            .map(|port| TcpListener::bind(("127.0.0.1", port)))
            .collect();
        if rest.iter().all(Result::is_ok) {
            return first;
        }
    }
}

/// A server process owned by one test; killed when dropped.
pub struct Server {
    pub child: Child,
    pub port: u16,
    _dir: Option<TempDir>,
}

impl Server {
    /// SIGKILL: the server disappears without a goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP: connections stay open and nothing is answered until
    /// [`Server::resume`].
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Server::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill {signal} {}", self.child.id());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A directory removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn wait_listening(port: u16, what: &str) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} did not start on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A private Apache Kafka (single-node KRaft) on a free port, for a test
/// that stops or restarts its broker. It runs `scripts/kafka/broker`, the
/// same script `scripts/up` and `scripts/test` start theirs with. A JVM takes
/// seconds to start: tests that only need a broker use [`kafka`].
pub fn spawn_broker() -> Server {
    let port = free_port();
    let controller = free_port();
    let dir = TempDir::new("kafka");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/kafka/broker");
    let child = Command::new(script)
        .args([port.to_string(), controller.to_string()])
        .arg(&dir.0)
        // A second broker beside the shared one: a smaller heap.
        .env("KAFKA_HEAP", "-Xms256m -Xmx512m")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting Kafka");
    let server = Server {
        child,
        port,
        _dir: Some(dir),
    };
    wait_kafka(&server);
    server
}

/// Runs one of Apache Kafka's own command-line tools (`scripts/kafka/run`)
/// and returns what it printed: an independent reading of the broker,
/// e.g. `kafka_tool(&["org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
/// "--bootstrap-server", b, "--describe", "--group", g])`.
pub fn kafka_tool(args: &[&str]) -> String {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/kafka/run");
    let out = Command::new(script)
        .args(args)
        .output()
        .expect("running a Kafka tool");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What Kafka's own `kafka-topics --describe` reports: the partition count
/// and the topic's overrides.
pub fn kafka_topic_describe(
    brokers: &str,
    topic: &str,
) -> (i32, std::collections::BTreeMap<String, String>) {
    let out = kafka_tool(&[
        "org.apache.kafka.tools.TopicCommand",
        "--bootstrap-server",
        brokers,
        "--describe",
        "--topic",
        topic,
    ]);
    // Topic: t  TopicId: …  PartitionCount: 3  ReplicationFactor: 1  Configs: a=1,b=2
    let head = out.lines().next().unwrap_or_default();
    let field = |name: &str| {
        let at = head.find(name).unwrap_or_else(|| panic!("{name} in {out}")) + name.len();
        head[at..].split('\t').next().unwrap().trim().to_owned()
    };
    let config = field("Configs:")
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    (field("PartitionCount:").parse().unwrap(), config)
}

/// Until the broker answers a metadata request (it listens before it is
/// ready to serve).
fn wait_kafka(server: &Server) {
    use rdkafka::consumer::BaseConsumer;
    let started = Instant::now();
    let brokers = format!("127.0.0.1:{}", server.port);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    while consumer
        .fetch_metadata(None, Duration::from_secs(2))
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "Kafka did not start on {brokers} (log: {}/server.log)",
            server._dir.as_ref().unwrap().0.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A private redis-server on a free port.
pub fn spawn_redis() -> Server {
    let port = free_port();
    let child = Command::new(required("ORDERFLOW_TEST_REDIS_SERVER"))
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting redis-server");
    wait_listening(port, "redis-server");
    Server {
        child,
        port,
        _dir: None,
    }
}

/// A private MongoDB-compatible server on `port`, keeping its data in `dir`
/// (so a restarted server finds what the killed one stored).
pub fn spawn_mongo(port: u16, dir: &std::path::Path) -> Server {
    let bin = required("ORDERFLOW_TEST_MONGOD");
    let mut cmd = Command::new(&bin);
    cmd.args([
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--storage-path",
    ])
    .arg(dir);
    if bin.ends_with("secantusd-rs") {
        cmd.args(["--cache-size", "64M"]);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the MongoDB server");
    wait_listening(port, "mongodb");
    Server {
        child,
        port,
        _dir: None,
    }
}

/// A private SMTP server that keeps every message it accepts, so a test can
/// count what was really delivered: aiosmtpd (in a Maildir), or Postfix's
/// smtp-sink (a file per mail), which offers PIPELINING.
pub struct SmtpSink {
    pub server: Server,
    kind: SmtpKind,
    mail: TempDir,
}

#[derive(Clone, Copy)]
enum SmtpKind {
    Aiosmtpd,
    Postfix,
}

/// One stored e-mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// The envelope's recipients, separated by ", ".
    pub to: String,
    pub subject: String,
    pub message_id: String,
}

/// aiosmtpd: what the saga tests deliver to.
pub fn spawn_smtp() -> SmtpSink {
    SmtpSink::spawn(SmtpKind::Aiosmtpd)
}

/// Postfix's smtp-sink (the bench's SMTP server), which offers PIPELINING.
pub fn spawn_postfix_smtp() -> SmtpSink {
    SmtpSink::spawn(SmtpKind::Postfix)
}

impl SmtpSink {
    fn spawn(kind: SmtpKind) -> SmtpSink {
        let port = free_port();
        let mail = TempDir::new("mail");
        let child = smtp_server(kind, port, &mail);
        SmtpSink {
            server: Server {
                child,
                port,
                _dir: None,
            },
            kind,
            mail,
        }
    }

    /// SIGKILL: connections are refused until [`SmtpSink::restart`].
    pub fn stop(&mut self) {
        self.server.kill();
    }

    /// The server back on the same port, with the same mailbox.
    pub fn restart(&mut self) {
        self.server.child = smtp_server(self.kind, self.server.port, &self.mail);
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.server.port)
    }

    /// Every message received in full so far.
    pub fn mails(&self) -> Vec<Mail> {
        let dir = match self.kind {
            SmtpKind::Aiosmtpd => self.mail.0.join("box").join("new"),
            SmtpKind::Postfix => self.mail.0.clone(),
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .filter_map(|text| {
                let headers: Vec<(&str, &str)> = text
                    .lines()
                    .take_while(|l| !l.is_empty())
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k, v.trim()))
                    .collect();
                let all = |name: &'static str| {
                    headers
                        .iter()
                        .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| *v)
                };
                let header = |name: &'static str| all(name).next().unwrap_or_default().to_owned();
                let to = match self.kind {
                    SmtpKind::Aiosmtpd => header("X-RcptTo"),
                    // A dump is complete when its closing empty line is
                    // written; one X-Rcpt-Args line per recipient.
                    SmtpKind::Postfix if !text.ends_with("\n\n") => return None,
                    SmtpKind::Postfix => all("X-Rcpt-Args")
                        .map(|a| a.trim_start_matches('<').trim_end_matches('>'))
                        .collect::<Vec<_>>()
                        .join(", "),
                };
                Some(Mail {
                    to,
                    subject: header("Subject"),
                    message_id: header("Message-ID"),
                })
            })
            .collect()
    }
}

fn smtp_server(kind: SmtpKind, port: u16, mail: &TempDir) -> Child {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let listen = format!("127.0.0.1:{port}");
    let mut command = match kind {
        SmtpKind::Aiosmtpd => {
            let mut c = Command::new(required("ORDERFLOW_TEST_AIOSMTPD"));
            c.args(["-n", "-l", &listen, "-c", "aiosmtpd.handlers.Mailbox"])
                .arg(mail.0.join("box"));
            c
        }
        SmtpKind::Postfix => {
            let mut c = Command::new(required("ORDERFLOW_TEST_SMTP_SINK"));
            c.env("LD_LIBRARY_PATH", required("ORDERFLOW_TEST_SMTP_SINK_LIBS"));
            // smtp-sink refuses to run as root without a user to become,
            // who then writes the dumps.
            if std::fs::metadata("/proc/self").unwrap().uid() == 0 {
                c.args(["-u", "nobody"]);
                std::fs::set_permissions(&mail.0, std::fs::Permissions::from_mode(0o777)).unwrap();
            }
            // A file per mail: the template plus a random suffix.
            c.arg("-d").arg(mail.0.join("mail.")).args([&listen, "100"]);
            c
        }
    };
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the SMTP server");
    wait_listening(port, "the SMTP server");
    child
}

/// How far `group` has committed on `topic`, and where the topic ends:
/// (Σ committed offsets, Σ high watermarks) over its partitions. A busy
/// local broker sometimes times out; this asks again.
pub fn group_position(brokers: &str, group: &str, topic: &str) -> (i64, i64) {
    let mut last = None;
    for _ in 0..10 {
        match try_group_position(brokers, group, topic) {
            Ok(p) => return p,
            Err(e) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    panic!("position of {group} on {topic}: {last:?}");
}

fn try_group_position(
    brokers: &str,
    group: &str,
    topic: &str,
) -> Result<(i64, i64), rdkafka::error::KafkaError> {
    use rdkafka::consumer::BaseConsumer;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let timeout = Duration::from_secs(15);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    let mut done = 0;
    let mut end = 0;
    for p in &partitions {
        let (_, high) = consumer.fetch_watermarks(topic, *p, timeout)?;
        end += high;
        if let Some(rdkafka::Offset::Offset(o)) =
            committed.find_partition(topic, *p).map(|e| e.offset())
        {
            done += o;
        }
    }
    Ok((done, end))
}

/// Where tests leave what a person may want to look at (screenshots):
/// `target/artifacts/`.
pub fn artifacts_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/artifacts");
    std::fs::create_dir_all(&dir).expect("creating target/artifacts");
    dir
}
