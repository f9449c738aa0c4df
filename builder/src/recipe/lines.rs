//! Where a key or step is in recipe.yaml, for `file:line` diagnostics. serde_yaml's values carry
//! no positions, so these are plain scans of the text (recipes are block YAML).

/// 1-based line of the first line containing `needle`, or None.
pub(super) fn line_of(text: &str, needle: &str) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

/// 1-based line of a top-level key such as `output:`.
pub(super) fn key_line(text: &str, key: &str) -> Option<usize> {
    let pat = format!("{key}:");
    text.lines()
        .position(|l| l.trim_start().starts_with(&pat))
        .map(|i| i + 1)
}

/// Line of `key:` inside the step starting at `step_line` (before the next step), else the step line.
pub(super) fn key_in_step(
    text: &str,
    step_line: Option<usize>,
    next: Option<usize>,
    key: &str,
) -> Option<usize> {
    let start = step_line?;
    let pat = format!("{key}:");
    text.lines()
        .enumerate()
        .skip(start - 1)
        .take_while(|(i, _)| next.map(|n| i + 1 < n).unwrap_or(true))
        .find(|(_, l)| l.trim_start().trim_start_matches("- ").starts_with(&pat))
        .map(|(i, _)| i + 1)
        .or(step_line)
}

/// Lines of the items of the top-level `steps:` list (a plain scan: recipes are block YAML).
pub(super) fn step_lines(text: &str) -> Vec<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().position(|l| l.starts_with("steps:")) else {
        return Vec::new();
    };
    let mut indent: Option<usize> = None;
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate().skip(start + 1) {
        let t = l.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let ind = l.len() - t.len();
        if ind == 0 && !t.starts_with('-') {
            break;
        }
        if t.starts_with("- ") || t == "-" {
            match indent {
                None => {
                    indent = Some(ind);
                    out.push(i + 1);
                }
                Some(x) if x == ind => out.push(i + 1),
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_lines_found() {
        let t = "name: x\nsteps:\n  - script: a.sh\n    name: a\n  # c\n  - reboot: true\noutput:\n  name: y\n";
        assert_eq!(step_lines(t), vec![3, 6]);
    }
}
