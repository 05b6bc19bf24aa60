//! End-to-end: runs the `cpus` example and checks its JSON against this machine (every online
//! CPU, whatever the affinity it was started with, and /proc/cpuinfo), against `qemu-x86_64`
//! CPU models (features the OS must enable), and against a recorded AArch64 sysfs tree.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::collections::BTreeMap;
mod common;

use std::process::Command;

/// A parsed JSON value (just enough JSON for this test).
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(BTreeMap<String, Json>),
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected {:?} at {}", c as char, self.i))
        }
    }
    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        match self.s.get(self.i).copied() {
            Some(b'{') => {
                self.i += 1;
                let mut m = BTreeMap::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(m));
                }
                loop {
                    self.ws();
                    let Json::Str(k) = self.value()? else {
                        return Err("object key".into());
                    };
                    self.eat(b':')?;
                    let v = self.value()?;
                    if m.insert(k.clone(), v).is_some() {
                        return Err(format!("duplicate key {k}"));
                    }
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(m));
                        }
                        _ => return Err(format!("bad object at {}", self.i)),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut v = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Arr(v));
                }
                loop {
                    v.push(self.value()?);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(v));
                        }
                        _ => return Err(format!("bad array at {}", self.i)),
                    }
                }
            }
            Some(b'"') => {
                self.i += 1;
                let mut out = String::new();
                loop {
                    let c = *self.s.get(self.i).ok_or("unterminated string")?;
                    self.i += 1;
                    match c {
                        b'"' => return Ok(Json::Str(out)),
                        b'\\' => {
                            let e = *self.s.get(self.i).ok_or("bad escape")?;
                            self.i += 1;
                            match e {
                                b'"' => out.push('"'),
                                b'\\' => out.push('\\'),
                                b'/' => out.push('/'),
                                b'n' => out.push('\n'),
                                b't' => out.push('\t'),
                                b'r' => out.push('\r'),
                                b'u' => {
                                    let h = std::str::from_utf8(&self.s[self.i..self.i + 4])
                                        .map_err(|e| e.to_string())?;
                                    let n =
                                        u32::from_str_radix(h, 16).map_err(|e| e.to_string())?;
                                    out.push(char::from_u32(n).ok_or("bad \\u")?);
                                    self.i += 4;
                                }
                                _ => return Err("bad escape".into()),
                            }
                        }
                        c if c < 0x20 => return Err("control character in string".into()),
                        _ => {
                            // Copy one UTF-8 sequence.
                            let start = self.i - 1;
                            let mut end = self.i;
                            while end < self.s.len() && (self.s[end] & 0xc0) == 0x80 {
                                end += 1;
                            }
                            out.push_str(
                                std::str::from_utf8(&self.s[start..end])
                                    .map_err(|e| e.to_string())?,
                            );
                            self.i = end;
                        }
                    }
                }
            }
            Some(b't') if self.s[self.i..].starts_with(b"true") => {
                self.i += 4;
                Ok(Json::Bool(true))
            }
            Some(b'f') if self.s[self.i..].starts_with(b"false") => {
                self.i += 5;
                Ok(Json::Bool(false))
            }
            Some(b'n') if self.s[self.i..].starts_with(b"null") => {
                self.i += 4;
                Ok(Json::Null)
            }
            Some(c) if c == b'-' || c.is_ascii_digit() => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                let t = std::str::from_utf8(&self.s[start..self.i]).unwrap();
                t.parse()
                    .map(Json::Num)
                    .map_err(|_| format!("bad number {t}"))
            }
            _ => Err(format!("unexpected input at {}", self.i)),
        }
    }
}

fn parse(text: &str) -> Json {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let v = p
        .value()
        .unwrap_or_else(|e| panic!("invalid JSON ({e}): {text}"));
    p.ws();
    assert_eq!(p.i, text.len(), "one JSON object and nothing else: {text}");
    v
}

/// The online CPUs, from sysfs (the set the example must cover).
fn online_cpus() -> Vec<u32> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let mut out = Vec::new();
    for item in text.trim().split(',') {
        match item.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<u32>().unwrap()..=b.parse().unwrap()),
            None => out.push(item.parse().unwrap()),
        }
    }
    out
}

fn run_json(cmd: &mut Command, what: &str) -> BTreeMap<String, Json> {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let Json::Obj(top) = parse(text.trim_end()) else {
        panic!("{what}: not an object: {text}");
    };
    top
}

fn indices(top: &BTreeMap<String, Json>) -> Vec<u32> {
    let Json::Arr(cpus) = &top["cpus"] else {
        panic!("cpus is not an array");
    };
    cpus.iter()
        .map(|c| match c {
            Json::Obj(c) => match c["index"] {
                Json::Num(n) => n as u32,
                _ => panic!("index"),
            },
            _ => panic!("cpu is not an object"),
        })
        .collect()
}

fn strings(v: &Json) -> Vec<String> {
    match v {
        Json::Arr(a) => a
            .iter()
            .map(|x| match x {
                Json::Str(s) => s.clone(),
                other => panic!("expected a string, got {other:?}"),
            })
            .collect(),
        other => panic!("expected an array, got {other:?}"),
    }
}

#[test]
fn cpus_example_json_matches_this_machine() {
    let out = Command::new(common::example("cpus"))
        .arg("--json")
        .output()
        .expect("run the cpus example");
    assert!(
        out.status.success(),
        "cpus --json failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let Json::Obj(top) = parse(text.trim_end()) else {
        panic!("not an object: {text}");
    };
    let keys: Vec<&str> = top.keys().map(String::as_str).collect();
    assert_eq!(keys, ["cpus", "errata", "features"]);
    let Json::Arr(cpus) = &top["cpus"] else {
        panic!("cpus is not an array");
    };
    assert_eq!(indices(&top), online_cpus());
    // available_parallelism is the affinity count, lowered further by a cgroup CPU quota.
    assert!(cpus.len() >= std::thread::available_parallelism().unwrap().get());

    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let popcnt_everywhere = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .all(|l| l.split_whitespace().any(|f| f == "popcnt"));
    let system_features = strings(&top["features"]);
    assert_eq!(
        system_features.iter().any(|f| f == "popcnt"),
        popcnt_everywhere
    );
    let mut union_errata = Vec::new();
    for cpu in cpus {
        let Json::Obj(c) = cpu else {
            panic!("cpu is not an object")
        };
        assert!(matches!(c["index"], Json::Num(_)));
        assert!(matches!(&c["vendor"], Json::Str(s) if !s.is_empty()));
        let feats = strings(&c["features"]);
        // The system set is the intersection of the CPUs' sets.
        for f in &system_features {
            assert!(feats.contains(f), "system feature {f} missing on a CPU");
        }
        union_errata.extend(strings(&c["errata"]));
    }
    union_errata.sort();
    union_errata.dedup();
    let mut sys_errata = strings(&top["errata"]);
    sys_errata.sort();
    assert_eq!(sys_errata, union_errata, "system errata are the union");
}

#[test]
fn a_program_started_on_cpu_0_still_decides_for_every_online_cpu() {
    // Regression (issue 14 item 5): the probe followed the affinity mask, so under
    // `taskset -c 0` only CPU 0 was probed although the process may later run on CPU 1.
    let top = run_json(
        Command::new("taskset")
            .args(["-c", "0"])
            .arg(common::example("cpus"))
            .arg("--json"),
        "taskset -c 0 cpus --json",
    );
    assert_eq!(indices(&top), online_cpus());
    // The same under the thorough probe, which pins a thread to each online CPU.
    let each = run_json(
        Command::new("taskset")
            .args(["-c", "0"])
            .arg(common::example("cpus"))
            .args(["--each", "--json"]),
        "taskset -c 0 cpus --each --json",
    );
    assert_eq!(
        each, top,
        "one probe per core type agrees with a probe per CPU here"
    );
}

#[test]
fn fsgsbase_is_not_reported_where_the_os_does_not_say_it_enabled_it() {
    // qemu-user gives no AT_HWCAP2 on x86-64: Haswell's CPUID has FSGSBASE (leaf 7 EBX bit
    // 0), but no OS said it enabled the instructions, so the probe must not report them.
    // Natively, Linux reports it in AT_HWCAP2 when it enabled them, as /proc/cpuinfo does.
    let bin = common::example("cpus");
    let out = common::run_on_model("Haswell", &bin, &["--json"], &[]);
    let top = common::json(&out, "cpus --json under qemu-x86_64 -cpu Haswell");
    let features: Vec<&str> = top["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(features.contains(&"avx2"), "{features:?}");
    assert!(!features.contains(&"fsgsbase"), "{features:?}");
    assert!(!features.contains(&"xsave") || features.contains(&"osxsave"));
    let native = run_json(Command::new(&bin).arg("--json"), "cpus --json");
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let os_enabled = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .all(|l| l.split_whitespace().any(|f| f == "fsgsbase"));
    assert_eq!(
        strings(&native["features"]).iter().any(|f| f == "fsgsbase"),
        os_enabled
    );
}

#[test]
fn a_recorded_aarch64_tree_replays_to_the_same_json_shape() {
    // Rockchip RK3399: CPUs 0-3 Cortex-A53 r0p4, CPUs 4-5 Cortex-A72 r0p2, as Linux writes
    // /sys/devices/system/cpu (CPU 5 taken offline: no registers, not in `online`).
    let root = std::env::temp_dir().join(format!("alt-cpus-rk3399-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let cpu = root.join("devices/system/cpu");
    for (n, midr) in [
        (0, 0x410f_d034u32),
        (1, 0x410f_d034),
        (2, 0x410f_d034),
        (3, 0x410f_d034),
        (4, 0x410f_d082),
    ] {
        let d = cpu.join(format!("cpu{n}/regs/identification"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("midr_el1"), format!("0x{midr:016x}\n")).unwrap();
        std::fs::write(d.join("revidr_el1"), "0x0000000000000000\n").unwrap();
    }
    std::fs::create_dir_all(cpu.join("cpu5")).unwrap();
    std::fs::write(cpu.join("online"), "0-4\n").unwrap();
    std::fs::write(cpu.join("offline"), "5\n").unwrap();
    let top = run_json(
        Command::new(common::example("cpus"))
            .arg("--sysfs")
            .arg(&root)
            .arg("--json"),
        "cpus --sysfs DIR --json",
    );
    let _ = std::fs::remove_dir_all(&root);
    let keys: Vec<&str> = top.keys().map(String::as_str).collect();
    assert_eq!(keys, ["cpus", "errata", "features"]);
    assert_eq!(indices(&top), [0, 1, 2, 3, 4]);
    let Json::Arr(cpus) = &top["cpus"] else {
        panic!()
    };
    let little = [
        "erratum_arm64_835769",
        "erratum_arm64_843419",
        "erratum_arm64_845719",
    ];
    let big = ["erratum_arm64_1319367", "erratum_arm64_1742098"];
    for (i, c) in cpus.iter().enumerate() {
        let Json::Obj(c) = c else { panic!() };
        assert_eq!(c["arch"], Json::Str("aarch64".into()));
        let (midr, core, errata) = if i < 4 {
            (0x410f_d034, "Cortex-A53", &little[..])
        } else {
            (0x410f_d082, "Cortex-A72", &big[..])
        };
        assert_eq!(c["midr"], Json::Num(midr as f64));
        assert_eq!(c["core"], Json::Str(core.into()));
        assert_eq!(strings(&c["errata"]), errata);
        assert_eq!(strings(&c["features"]), Vec::<String>::new());
    }
    let mut all: Vec<&str> = little.iter().chain(big.iter()).copied().collect();
    all.sort();
    let mut sys = strings(&top["errata"]);
    sys.sort();
    assert_eq!(sys, all, "errata: OR over the CPUs");
    assert_eq!(strings(&top["features"]), Vec::<String>::new());
    // A file Linux would never write is an error naming it.
    let out = Command::new(common::example("cpus"))
        .args(["--sysfs", "/nonexistent", "--json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/devices/system/cpu/online"));
}
