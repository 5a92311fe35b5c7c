//! multipart/form-data (RFC 7578) decoding of a whole, already size-limited body.
//!
//! The body is in memory anyway (read under `max_body`), so a parser over the buffer is
//! enough: no streaming parser, no extra dependency. Parts with a `filename` become
//! [`FormFile`]s, the others text fields (which must be UTF-8).

use memchr::memmem;
use mldeploy_model::{Form, FormFile};

/// Most parts accepted in one body.
const MAX_PARTS: usize = 1000;
/// Longest header block of one part.
const MAX_PART_HEAD: usize = 8 * 1024;

/// The `boundary` parameter of a `multipart/form-data` Content-Type.
pub(crate) fn boundary(content_type: &str) -> Option<String> {
    let (_, params) = content_type.split_once(';')?;
    params_of(params)
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v)
        .filter(|b| !b.is_empty() && b.len() <= 70)
}

/// Split `a=1; b="x;y"` into pairs, unquoting values.
fn params_of(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        if rest.is_empty() {
            return out;
        }
        let name_end = rest.find(['=', ';']).unwrap_or(rest.len());
        let name = rest[..name_end].trim().to_string();
        rest = &rest[name_end..];
        let Some(after_eq) = rest.strip_prefix('=') else {
            out.push((name, String::new()));
            continue;
        };
        let after_eq = after_eq.trim_start();
        if let Some(quoted) = after_eq.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            out.push((name, value));
            rest = &quoted[end.min(quoted.len())..];
        } else {
            let end = after_eq.find(';').unwrap_or(after_eq.len());
            out.push((name, after_eq[..end].trim().to_string()));
            rest = &after_eq[end..];
        }
    }
}

/// Decode `body` with `boundary`.
pub(crate) fn parse(body: &[u8], boundary: &str) -> Result<Form, String> {
    let delimiter = format!("--{boundary}");
    let next_part = format!("\r\n--{boundary}");
    let mut form = Form::default();
    // The first delimiter may follow a preamble.
    let mut at = if body.starts_with(delimiter.as_bytes()) {
        0
    } else {
        memmem::find(body, next_part.as_bytes()).ok_or("no part found for the boundary")? + 2
    };
    for _ in 0..=MAX_PARTS {
        let after = at + delimiter.len();
        let rest = &body[after..];
        if rest.starts_with(b"--") {
            return Ok(form);
        }
        let line_end = memmem::find(rest, b"\r\n").ok_or("a delimiter line does not end")?;
        if rest[..line_end].iter().any(|b| !matches!(b, b' ' | b'\t')) {
            return Err("unexpected bytes after a delimiter".into());
        }
        let head_start = after + line_end + 2;
        let (head, content_start) = if body[head_start..].starts_with(b"\r\n") {
            (&body[head_start..head_start], head_start + 2)
        } else {
            let end = memmem::find(&body[head_start..], b"\r\n\r\n").ok_or("a part's headers do not end")?;
            (&body[head_start..head_start + end], head_start + end + 4)
        };
        if head.len() > MAX_PART_HEAD {
            return Err("a part's headers are too long".into());
        }
        let content_len = memmem::find(&body[content_start..], next_part.as_bytes())
            .ok_or("the last part is not closed")?;
        let content = &body[content_start..content_start + content_len];
        add_part(&mut form, head, content)?;
        at = content_start + content_len + 2;
    }
    Err(format!("more than {MAX_PARTS} parts"))
}

fn add_part(form: &mut Form, head: &[u8], content: &[u8]) -> Result<(), String> {
    let head = std::str::from_utf8(head).map_err(|_| "a part's headers are not UTF-8")?;
    let mut disposition = None;
    let mut content_type = None;
    for line in head.split("\r\n") {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("malformed part header line {line:?}"));
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-disposition") {
            disposition = Some(value.trim());
        } else if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.trim().to_string());
        }
    }
    let disposition = disposition.ok_or("a part has no Content-Disposition")?;
    let (kind, params) = disposition.split_once(';').unwrap_or((disposition, ""));
    if !kind.trim().eq_ignore_ascii_case("form-data") {
        return Err(format!("a part's Content-Disposition is {:?}, not form-data", kind.trim()));
    }
    let params = params_of(params);
    let get = |key: &str| params.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.clone());
    let field = get("name").ok_or("a part has no name")?;
    match get("filename") {
        Some(filename) => form.files.push(FormFile {
            field,
            filename: Some(filename).filter(|f| !f.is_empty()),
            content_type,
            data: content.to_vec(),
        }),
        None => {
            let text =
                std::str::from_utf8(content).map_err(|_| format!("field {field:?} is not UTF-8 text"))?;
            form.fields.push((field, text.to_string()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundary_parameter() {
        assert_eq!(boundary("multipart/form-data; boundary=abc"), Some("abc".into()));
        assert_eq!(boundary("multipart/form-data; charset=utf-8; BOUNDARY=\"a b;c\""), Some("a b;c".into()));
        assert_eq!(boundary("multipart/form-data"), None);
        assert_eq!(boundary("multipart/form-data; boundary="), None);
    }

    #[test]
    fn fields_and_files() {
        let body = b"preamble\r\n--XyZ\r\n\
            Content-Disposition: form-data; name=\"name\"\r\n\r\n\
            Ada\r\n--XyZ\r\n\
            content-disposition: form-data; name=\"upload\"; filename=\"a;b.csv\"\r\n\
            Content-Type: text/csv\r\n\r\n\
            x,y\r\n1,2\r\n\r\n--XyZ\r\n\
            Content-Disposition: form-data; name=\"empty\"\r\n\r\n\
            \r\n--XyZ--\r\nepilogue";
        let form = parse(body, "XyZ").unwrap();
        assert_eq!(
            form.fields,
            vec![("name".to_string(), "Ada".to_string()), ("empty".to_string(), String::new())]
        );
        assert_eq!(form.files.len(), 1);
        let file = &form.files[0];
        assert_eq!(file.field, "upload");
        assert_eq!(file.filename.as_deref(), Some("a;b.csv"));
        assert_eq!(file.content_type.as_deref(), Some("text/csv"));
        assert_eq!(file.data, b"x,y\r\n1,2\r\n");
    }

    #[test]
    fn binary_file_content_is_kept() {
        let mut body =
            b"--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x.bin\"\r\n\r\n".to_vec();
        body.extend_from_slice(&[0, 255, 13, 10, 45, 45, 99]);
        body.extend_from_slice(b"\r\n--b--\r\n");
        let form = parse(&body, "b").unwrap();
        assert_eq!(form.files[0].data, vec![0, 255, 13, 10, 45, 45, 99]);
    }

    #[test]
    fn malformed_bodies() {
        assert!(parse(b"nothing here", "b").unwrap_err().contains("no part"));
        assert!(parse(b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nunclosed", "b")
            .unwrap_err()
            .contains("not closed"));
        assert!(parse(b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--", "b")
            .unwrap_err()
            .contains("no Content-Disposition"));
        assert!(parse(b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--", "b")
            .unwrap_err()
            .contains("no name"));
        let not_utf8 = b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n\xff\r\n--b--";
        assert!(parse(not_utf8, "b").unwrap_err().contains("not UTF-8"));
        let many: Vec<u8> = (0..=MAX_PARTS)
            .flat_map(|_| b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n".to_vec())
            .chain(b"--b--".to_vec())
            .collect();
        assert!(parse(&many, "b").unwrap_err().contains("more than"));
    }
}
