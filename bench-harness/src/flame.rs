//! `--profile`: the gateway sampled with `perf record` while a scenario's measured runs go on,
//! folded into stacks (`stacks.folded`, Brendan Gregg's format) and drawn as a flame graph
//! (`flamegraph.svg`). The folding and drawing are done here, in a few lines, rather than with
//! a flame graph crate (the usual one is CDDL-licensed, which this AGPL project cannot link).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context as _;

/// A `perf record` attached to a process.
pub struct Recording {
    child: Child,
    data: PathBuf,
}

impl Recording {
    /// Starts sampling `pid` (99 Hz per CPU, call graphs) into `out/perf.data`.
    pub fn start(pid: u32, out: &Path) -> anyhow::Result<Recording> {
        let data = out.join("perf.data");
        let child = Command::new("perf")
            .args(["record", "-F", "999", "-g", "-p", &pid.to_string(), "-o"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("perf record (install linux-perf)")?;
        std::thread::sleep(std::time::Duration::from_millis(300));
        Ok(Recording { child, data })
    }

    /// Stops sampling and writes `stacks.folded` and `flamegraph.svg` next to the data.
    pub fn finish(mut self, title: &str) -> anyhow::Result<PathBuf> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        self.child.wait()?;
        let out = Command::new("perf")
            .args(["script", "-i"])
            .arg(&self.data)
            .stderr(Stdio::null())
            .output()
            .context("perf script")?;
        let folded = fold(&String::from_utf8_lossy(&out.stdout));
        let dir = self.data.parent().unwrap_or(Path::new("."));
        let mut text = String::new();
        for (stack, n) in &folded {
            let _ = writeln!(text, "{stack} {n}");
        }
        std::fs::write(dir.join("stacks.folded"), text)?;
        let svg = dir.join("flamegraph.svg");
        std::fs::write(&svg, draw(&folded, title))?;
        Ok(svg)
    }
}

/// `perf script` output to folded stacks: `comm;outermost;...;innermost` → samples.
pub fn fold(script: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for block in script.split("\n\n") {
        let mut lines = block.lines().filter(|l| !l.trim().is_empty());
        let Some(head) = lines.next() else { continue };
        let comm = head.split_whitespace().next().unwrap_or("?");
        let mut frames: Vec<String> = lines
            .map(|l| {
                let l = l.trim();
                // `addr symbol+0xoff (dso)`
                let rest = l.split_once(' ').map_or("", |(_, r)| r);
                let sym = rest.rsplit_once(" (").map_or(rest, |(s, _)| s);
                let sym = sym.rsplit_once("+0x").map_or(sym, |(s, _)| s);
                if sym.is_empty() {
                    "[unknown]".to_string()
                } else {
                    sym.replace(';', ":")
                }
            })
            .collect();
        frames.reverse();
        let mut stack = comm.to_string();
        for f in frames {
            stack.push(';');
            stack.push_str(&f);
        }
        *out.entry(stack).or_insert(0) += 1;
    }
    out
}

#[derive(Default)]
struct Node {
    count: u64,
    children: BTreeMap<String, Node>,
}

/// A flame graph of folded stacks as SVG: one row per depth, widths by samples, each box
/// titled with its function, samples and share.
pub fn draw(folded: &BTreeMap<String, u64>, title: &str) -> String {
    let mut root = Node::default();
    for (stack, &n) in folded {
        root.count += n;
        let mut node = &mut root;
        for f in stack.split(';') {
            node = node.children.entry(f.to_string()).or_default();
            node.count += n;
        }
    }
    fn depth(n: &Node) -> usize {
        1 + n.children.values().map(depth).max().unwrap_or(0)
    }
    let (width, row) = (1200.0_f64, 16.0_f64);
    let rows = depth(&root);
    let height = row * rows as f64 + 40.0;
    let s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"monospace\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"#f8f8f8\"/>\n\
         <text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"15\" font-family=\"sans-serif\">{}</text>\n",
        width / 2.0,
        escape(title)
    );
    let mut c = Canvas {
        s,
        total: root.count.max(1) as f64,
        width,
        height: height - 10.0,
        row,
    };
    let mut x = 0.0;
    for (name, n) in &root.children {
        c.walk(name, n, x, 0);
        x += n.count as f64 / c.total * width;
    }
    let mut s = c.s;
    s.push_str("</svg>\n");
    s
}

/// The drawing under way.
struct Canvas {
    s: String,
    total: f64,
    width: f64,
    height: f64,
    row: f64,
}

impl Canvas {
    /// Draws `n` (named `name`) at `x`, `level` rows up, then its children above it.
    fn walk(&mut self, name: &str, n: &Node, x: f64, level: usize) {
        let (total, width, row) = (self.total, self.width, self.row);
        let w = n.count as f64 / total * width;
        if w < 0.3 {
            return;
        }
        let y = self.height - row * (level as f64 + 1.0);
        let h = name
            .bytes()
            .fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
        let (r, g) = (205 + (h % 50), 80 + ((h >> 8) % 120));
        let _ = writeln!(
            self.s,
            "<g><title>{} ({} samples, {:.2} %)</title><rect x=\"{x:.2}\" y=\"{y:.1}\" width=\"{w:.2}\" height=\"{:.1}\" fill=\"rgb({r},{g},50)\" rx=\"2\"/>",
            escape(name),
            n.count,
            100.0 * n.count as f64 / total,
            row - 1.0
        );
        let chars = ((w - 4.0) / 6.6) as usize;
        if chars >= 3 {
            let label: String = if name.chars().count() > chars {
                name.chars()
                    .take(chars.saturating_sub(2))
                    .collect::<String>()
                    + ".."
            } else {
                name.to_string()
            };
            let _ = writeln!(
                self.s,
                "<text x=\"{:.2}\" y=\"{:.1}\">{}</text>",
                x + 3.0,
                y + row - 4.0,
                escape(&label)
            );
        }
        self.s.push_str("</g>\n");
        let mut cx = x;
        for (child, c) in &n.children {
            self.walk(child, c, cx, level + 1);
            cx += c.count as f64 / total * width;
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_script_folds_outermost_first() {
        let script = "mxgate 10 [000] 1.0: 1 cycles:\n\
            \tffff0001 inner_fn+0x10 (/bin/mxgate)\n\
            \tffff0002 outer_fn+0x20 (/bin/mxgate)\n\n\
            mxgate 10 [000] 1.1: 1 cycles:\n\
            \tffff0001 inner_fn+0x12 (/bin/mxgate)\n\
            \tffff0002 outer_fn+0x20 (/bin/mxgate)\n\n\
            mxgate 10 [001] 1.2: 1 cycles:\n\
            \tffff0003 [unknown] ([kernel.kallsyms])\n";
        let f = fold(script);
        assert_eq!(f.get("mxgate;outer_fn;inner_fn"), Some(&2));
        assert_eq!(f.get("mxgate;[unknown]"), Some(&1));
        let svg = draw(&f, "t");
        assert!(svg.contains("inner_fn (2 samples, 66.67 %)"), "{svg}");
        assert!(svg.starts_with("<svg"));
    }
}
