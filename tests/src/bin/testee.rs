//! A process with exactly one known way to end, for the privileged tests.
//!
//! testee exit CODE          exit(CODE)
//! testee wait               print "ready", then wait forever (no handlers)
//! testee handler CODE [MS]  SIGTERM handler; print "ready"; exit(CODE) once it runs
//!                           (MS milliseconds after it runs: a short drain)
//! testee segv [CORE_DIR]    SIGSEGV; with CORE_DIR, allow a core dump written there
//! testee threads N CODE     start N-1 more threads, print "ready", exit(CODE)
//! testee thread-wait        start one more thread, print "ready TID" with its tid, wait
//! testee pidns CMD ARGS…    run CMD as PID 1 of a new PID namespace; print "ready PID"
//!                           (its pid here), then "status RAW" with its raw wait status
//! testee tcp-server ADDR [handler]
//!                           listen on ADDR (e.g. 127.0.0.1:0), print "ready PORT"; accept
//!                           and hold every connection, printing "accepted PORT" (the
//!                           client's); with `handler`, print "term" when SIGTERM arrives
//!                           and keep serving. Commands on stdin: "connect PORT" (hold an
//!                           outbound connection to ADDR's host, print "connected"),
//!                           "abort PORT" (connect there and close at once with SO_LINGER
//!                           0, print "aborted"), "pin" (run on CPU 0, print "pinned"),
//!                           "exit"
use std::{
    io::Write,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

static TERM_RECEIVED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_: libc::c_int) {
    TERM_RECEIVED.store(true, Ordering::SeqCst);
}

fn ready(extra: &str) {
    ready_line(&format!("ready{extra}"));
}

fn wait_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let number = |i: usize| arg(i).parse::<i32>().expect("a number argument");
    match arg(0) {
        "exit" => std::process::exit(number(1)),
        "wait" => {
            ready("");
            wait_forever()
        }
        "handler" => {
            // SAFETY: installing an async-signal-safe handler that only stores an atomic.
            unsafe { libc::signal(libc::SIGTERM, on_sigterm as *const () as libc::sighandler_t) };
            ready("");
            while !TERM_RECEIVED.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let drain_ms = arg(2).parse::<u64>().unwrap_or(0);
            std::thread::sleep(Duration::from_millis(drain_ms));
            std::process::exit(number(1))
        }
        "segv" => {
            if !arg(1).is_empty() {
                std::env::set_current_dir(arg(1)).expect("core directory");
                let unlimited = libc::rlimit {
                    rlim_cur: libc::RLIM_INFINITY,
                    rlim_max: libc::RLIM_INFINITY,
                };
                // SAFETY: a valid rlimit.
                unsafe { libc::setrlimit(libc::RLIMIT_CORE, &unlimited) };
            }
            // SAFETY: deliberately raising SIGSEGV with its default action (the Rust
            // runtime installs its own SIGSEGV handler for stack overflows).
            unsafe {
                libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                libc::raise(libc::SIGSEGV);
            }
            unreachable!("SIGSEGV returned")
        }
        "threads" => {
            let count = number(1);
            let (started, all_started) = std::sync::mpsc::channel();
            for _ in 1..count {
                let started = started.clone();
                std::thread::spawn(move || {
                    started.send(()).unwrap();
                    wait_forever()
                });
            }
            for _ in 1..count {
                all_started.recv().unwrap();
            }
            ready("");
            std::process::exit(number(2))
        }
        "thread-wait" => {
            let (tid_tx, tid_rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                // SAFETY: gettid has no preconditions.
                tid_tx.send(unsafe { libc::gettid() }).unwrap();
                wait_forever()
            });
            ready(&format!(" {}", tid_rx.recv().unwrap()));
            wait_forever()
        }
        "pidns" => run_as_namespace_init(&args[1..]),
        "tcp-server" => tcp_server(arg(1), arg(2) == "handler"),
        other => {
            eprintln!("testee: unknown mode '{other}'");
            std::process::exit(64)
        }
    }
}

fn run_as_namespace_init(command: &[String]) -> ! {
    let argv: Vec<std::ffi::CString> = command
        .iter()
        .map(|a| std::ffi::CString::new(a.as_str()).unwrap())
        .collect();
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    // SAFETY: unshare/fork/execvp/waitpid with valid arguments; the child only execs.
    unsafe {
        assert_eq!(
            libc::unshare(libc::CLONE_NEWPID),
            0,
            "unshare(CLONE_NEWPID)"
        );
        match libc::fork() {
            -1 => panic!("fork failed"),
            0 => {
                libc::execvp(argv_ptrs[0], argv_ptrs.as_ptr());
                libc::_exit(127)
            }
            child => {
                ready(&format!(" {child}"));
                let mut status = 0;
                libc::waitpid(child, &mut status, 0);
                println!("status {status}");
                std::process::exit(0)
            }
        }
    }
}

fn tcp_server(addr: &str, handler: bool) -> ! {
    use std::{
        io::BufRead,
        net::{SocketAddr, TcpListener, TcpStream},
    };
    if handler {
        // SAFETY: as in "handler" mode.
        unsafe { libc::signal(libc::SIGTERM, on_sigterm as *const () as libc::sighandler_t) };
        std::thread::spawn(|| {
            while !TERM_RECEIVED.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            ready_line("term");
        });
    }
    let listener = TcpListener::bind(addr).expect("bind");
    let local: SocketAddr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let stream = stream.expect("accept");
            ready_line(&format!("accepted {}", stream.peer_addr().unwrap().port()));
            held.push(stream);
        }
    });
    ready(&format!(" {}", local.port()));
    let mut outbound = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["connect", port] => {
                let target = SocketAddr::new(local.ip(), port.parse().unwrap());
                outbound.push(TcpStream::connect(target).expect("connect"));
                ready_line("connected");
            }
            ["abort", port] => {
                let target = SocketAddr::new(local.ip(), port.parse().unwrap());
                let stream = TcpStream::connect(target).expect("connect");
                observer_tests::sockets::set_linger_zero(&stream);
                drop(stream);
                ready_line("aborted");
            }
            ["pin"] => {
                observer_tests::sockets::pin_to_cpu0();
                ready_line("pinned");
            }
            ["exit"] => std::process::exit(0),
            _ => panic!("unknown command {line:?}"),
        }
    }
    std::process::exit(0)
}

fn ready_line(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}
