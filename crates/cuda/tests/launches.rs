//! Every kernel launch in `src/gpu.rs` passes as many arguments as its kernel in `kernels/*.cu`
//! takes. A launch cannot be checked by the compiler (the arguments are untyped pointers), and
//! one argument too few shifts every later one: this reads both sources as text, on any machine.

use orlik_cuda::kernels::MODULES;

/// The text inside the parentheses opened at `open` (an index of '(' in `s`).
fn inside(s: &str, open: usize) -> &str {
    let mut depth = 0;
    for (i, c) in s[open..].char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth == 0 {
                    return &s[open + 1..open + i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses after byte {open}");
}

/// Top-level comma-separated parts, empty ones (a trailing comma) left out.
fn parts(s: &str) -> Vec<String> {
    let (mut out, mut depth, mut cur) = (Vec::new(), 0, String::new());
    for c in s.chars() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out.into_iter().map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect()
}

fn kernel_params(name: &str) -> usize {
    for m in MODULES {
        let key = format!("extern \"C\" __global__ void {name}(");
        if let Some(at) = m.source.find(&key) {
            return parts(inside(m.source, at + key.len() - 1)).len();
        }
    }
    panic!("no kernel {name} in kernels/*.cu");
}

#[test]
fn every_launch_passes_its_kernels_arguments() {
    let src = include_str!("../src/gpu.rs");
    let mut checked = Vec::new();
    for (at, _) in src.match_indices("launch!(") {
        // The macro's own definition `macro_rules! launch` has no call site text of this shape.
        let args = parts(inside(src, at + "launch!".len()));
        if args.len() < 3 || !args[1].starts_with('"') {
            continue;
        }
        let name = args[1].trim_matches('"');
        let given = args.len() - 3; // self, the kernel's name, the launch config
        assert_eq!(given, kernel_params(name), "launch of {name}: {:?}", &args[3..]);
        checked.push(name.to_string());
    }
    // Every kernel is launched somewhere (a kernel nobody launches is dead code or a missing
    // wrapper).
    for m in MODULES {
        for f in m.functions {
            assert!(checked.iter().any(|c| c == f), "kernel {f} is never launched");
        }
    }
    println!("{} launches checked", checked.len());
}
