//! A rough reading of the User-Agent header into browser, OS and device
//! type, enough for a person to recognise "the phone" in a session list.

pub fn describe(user_agent: Option<&str>) -> String {
    let Some(ua) = user_agent.filter(|u| !u.is_empty()) else {
        return "Unknown device".to_string();
    };
    let has = |s: &str| ua.contains(s);
    let browser = if has("Edg/") {
        "Edge"
    } else if has("OPR/") || has("Opera") {
        "Opera"
    } else if has("Firefox/") {
        "Firefox"
    } else if has("Chrome/") || has("Chromium/") || has("CriOS/") {
        "Chrome"
    } else if has("Safari/") && has("Version/") {
        "Safari"
    } else if has("curl/") {
        "curl"
    } else if has("python-requests") || has("Python") {
        "Python"
    } else if has("okhttp") {
        "Android app"
    } else {
        "Unknown browser"
    };
    let os = if has("iPhone") || has("iPad") || has("iOS") {
        "iOS"
    } else if has("Android") {
        "Android"
    } else if has("Windows") {
        "Windows"
    } else if has("Mac OS X") || has("Macintosh") {
        "macOS"
    } else if has("CrOS") {
        "ChromeOS"
    } else if has("Linux") {
        "Linux"
    } else {
        "unknown OS"
    };
    let kind = if has("bot") || has("Bot") || has("crawler") {
        "bot"
    } else if has("iPad") || has("Tablet") {
        "tablet"
    } else if has("Mobile") || has("iPhone") || (has("Android") && !has("Tablet")) {
        "mobile"
    } else if browser == "curl" || browser == "Python" {
        "script"
    } else {
        "desktop"
    };
    format!("{browser} on {os} ({kind})")
}
