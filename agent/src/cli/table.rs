//! Column alignment for the CLI's tables (`ps`, `images`, `network ls`, `events`...), one
//! implementation for every command.

/// Aligns `rows` into columns `gap` spaces apart. Widths count characters, not bytes; the last
/// cell of a row is not padded and trailing blanks are trimmed, so a line never ends in spaces.
pub fn align<R: AsRef<[String]>>(rows: &[R], gap: usize) -> String {
    let cols = rows.iter().map(|r| r.as_ref().len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.as_ref().get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let row = row.as_ref();
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let w = widths.get(i).copied().unwrap_or(0);
                line.push_str(&" ".repeat(w.saturating_sub(cell.chars().count()) + gap));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_by_characters_and_lines_do_not_end_in_blanks() {
        let rows = vec![
            vec!["NAME".to_owned(), "SIZE".to_owned(), "NOTE".to_owned()],
            vec!["é-long-name".to_owned(), "1".to_owned(), String::new()],
            vec!["b".to_owned(), "22".to_owned(), "x".to_owned()],
        ];
        let t = align(&rows, 3);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "NAME          SIZE   NOTE");
        assert_eq!(lines[1], "é-long-name   1");
        assert_eq!(lines[2], "b             22     x");
        assert_eq!(align(&rows, 2).lines().nth(2), Some("b            22    x"));
    }

    #[test]
    fn arrays_and_ragged_rows_work() {
        let rows = [
            ["a".to_owned(), "b".to_owned()],
            ["ccc".to_owned(), "d".to_owned()],
        ];
        assert_eq!(align(&rows, 1), "a   b\nccc d\n");
        assert_eq!(align(&[vec!["x".to_owned()], vec![]], 2), "x\n\n");
        assert_eq!(align::<Vec<String>>(&[], 2), "");
    }
}
