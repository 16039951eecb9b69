//! HTML for the console: escaping, the page layout and small builders. Everything shown
//! comes from the broker's own state or the audit log and is escaped here; no page holds
//! a script or style inline (the `Content-Security-Policy` allows only `/console/static`).

use std::fmt::Write as _;

/// `s` escaped for HTML text and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// The console's pages, for the navigation bar.
pub const PAGES: &[(&str, &str)] = &[
    ("/console", "Inventory"),
    ("/console/anomalies", "Anomalies"),
    ("/console/break-glass", "Break-glass"),
    ("/console/revocations", "Revocations"),
    ("/console/keys", "Signing keys"),
    ("/console/audit", "Audit log"),
];

/// A message at the top of a page: the outcome of the last action.
#[derive(Debug, Clone)]
pub enum Flash {
    /// It worked.
    Done(String),
    /// It was refused or failed (the broker's own description).
    Refused(String),
}

/// Who is looking, for the layout.
pub struct Viewer<'a> {
    /// The admin's name.
    pub admin: &'a str,
    /// The admin's roles, comma-separated.
    pub roles: String,
    /// The session's CSRF token (for the sign-out form).
    pub csrf: &'a str,
}

/// A whole page: `title`, the navigation (`current` marked), an optional flash, `body`.
pub fn page(
    title: &str,
    current: &str,
    viewer: Option<&Viewer<'_>>,
    flash: Option<&Flash>,
    body: &str,
) -> String {
    let mut h = String::with_capacity(body.len() + 2048);
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · token broker console</title>\
         <link rel=\"stylesheet\" href=\"/console/static/console.css\"></head><body>",
        esc(title)
    );
    h.push_str("<header><span class=\"brand\">token broker</span>");
    if let Some(v) = viewer {
        h.push_str("<nav>");
        for (href, name) in PAGES {
            let cls = if *href == current {
                " class=\"current\""
            } else {
                ""
            };
            let _ = write!(h, "<a href=\"{href}\"{cls}>{name}</a>");
        }
        h.push_str("</nav>");
        let _ = write!(
            h,
            "<form class=\"signout\" method=\"post\" action=\"/console/logout\">\
             <span id=\"whoami\">{} ({})</span>{}<button type=\"submit\">Sign out</button></form>",
            esc(v.admin),
            esc(&v.roles),
            csrf_field(v.csrf)
        );
    }
    h.push_str("</header><main>");
    let _ = write!(h, "<h1>{}</h1>", esc(title));
    match flash {
        Some(Flash::Done(m)) => {
            let _ = write!(h, "<p class=\"flash done\" id=\"flash\">{}</p>", esc(m));
        }
        Some(Flash::Refused(m)) => {
            let _ = write!(h, "<p class=\"flash refused\" id=\"flash\">{}</p>", esc(m));
        }
        None => {}
    }
    h.push_str(body);
    h.push_str("</main></body></html>\n");
    h
}

/// The hidden CSRF field of a form.
pub fn csrf_field(token: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(token)
    )
}

/// A table: `headers`, then `rows` of already-escaped cells; `id` for tests and links.
pub fn table(id: &str, headers: &[&str], rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        return format!("<p class=\"empty\" id=\"{}\">Nothing to show.</p>", esc(id));
    }
    let mut h = format!("<table id=\"{}\"><thead><tr>", esc(id));
    for c in headers {
        let _ = write!(h, "<th>{}</th>", esc(c));
    }
    h.push_str("</tr></thead><tbody>");
    for r in rows {
        h.push_str("<tr>");
        for c in r {
            let _ = write!(h, "<td>{c}</td>");
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table>");
    h
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC` (or `—` for none).
pub fn time(secs: Option<u64>) -> String {
    secs.and_then(|t| i64::try_from(t).ok())
        .and_then(|t| chrono::DateTime::<chrono::Utc>::from_timestamp(t, 0))
        .map_or_else(
            || "—".to_owned(),
            |d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_shown_is_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        let t = table("t", &["a"], &[vec![esc("<b>")]]);
        assert!(t.contains("&lt;b&gt;") && !t.contains("<b>"), "{t}");
        let p = page(
            "<x>",
            "/console",
            None,
            Some(&Flash::Refused("<y>".into())),
            "",
        );
        assert!(!p.contains("<x>") && !p.contains("<y>"), "{p}");
        assert!(!p.contains("<script"), "no script in a page");
    }

    #[test]
    fn times_are_utc_dates() {
        assert_eq!(time(Some(0)), "1970-01-01 00:00:00 UTC");
        assert_eq!(time(Some(4_070_908_800)), "2099-01-01 00:00:00 UTC");
        assert_eq!(time(Some(1_796_400_061)), "2026-12-04 16:01:01 UTC");
        assert_eq!(time(None), "—");
    }
}
