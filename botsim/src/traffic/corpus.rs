//! Words the generator draws from: names in several scripts, multilingual texts with emoji
//! (including astral-plane characters, ZWJ sequences, flags and right-to-left text, which stress
//! UTF-16 entity offsets and text sanitising downstream).

/// (first name, last name, language code) — the language code goes into `User.language_code`.
pub(crate) const PEOPLE: &[(&str, Option<&str>, &str)] = &[
    ("Anna", Some("Schmidt"), "de"),
    ("Marco", Some("Rossi"), "it"),
    ("José", Some("García"), "es"),
    ("Chloé", None, "fr"),
    ("Emily", Some("Clarke"), "en"),
    ("Liam", None, "en"),
    ("Дмитрий", Some("Иванов"), "ru"),
    ("Ольга", Some("Петренко"), "uk"),
    ("Алексей", None, "ru"),
    ("محمد", Some("العلي"), "ar"),
    ("فاطمة", None, "ar"),
    ("יעל", Some("כהן"), "he"),
    ("王", Some("伟"), "zh-hans"),
    ("佐藤", Some("花子"), "ja"),
    ("민준", Some("김"), "ko"),
    ("प्रिया", Some("शर्मा"), "hi"),
    ("Νίκος", Some("Παπαδόπουλος"), "el"),
    ("Ayşe", Some("Yılmaz"), "tr"),
    ("Nguyễn", Some("Văn An"), "vi"),
    ("Kate 🌸", None, "en"),
    ("Zoë", Some("van Dijk"), "nl"),
    ("Søren", Some("Kierkegaard"), "da"),
    ("Thảo", None, "vi"),
    ("Bartłomiej", Some("Wiśniewski"), "pl"),
    ("ทองดี", None, "th"),
    ("Giorgi", Some("ბერიძე"), "ka"),
    ("🦊", None, "en"),
    ("Ingrid", Some("Ødegård"), "nb"),
];

/// Plain message texts, several languages and scripts, many with emoji.
pub(crate) const TEXTS: &[&str] = &[
    "Hello everyone 👋",
    "Good morning! ☀️ Anyone up for coffee?",
    "lol 😂😂😂",
    "Did you see the release notes? Big changes in 2.0 🚀",
    "I'll be 10 minutes late, sorry 🙏",
    "Привет! Как дела?",
    "Кто-нибудь знает, во сколько начало?",
    "Спасибо, всё работает 👍",
    "今日はいい天気ですね ☀️",
    "了解しました！",
    "大家好，今天的会议改到下午三点。",
    "مرحبا بالجميع 🌙",
    "شكرا جزيلا على المساعدة",
    "שלום לכולם, מה נשמע?",
    "नमस्ते 🙏 आज का कार्यक्रम क्या है?",
    "Καλημέρα σε όλους!",
    "Ça va ? On se retrouve à 18h 😄",
    "¿Alguien tiene el enlace de la reunión?",
    "Das klingt gut, bin dabei 🍻",
    "Family dinner on Sunday 👨‍👩‍👧‍👦",
    "Go team 🇺🇦🇧🇷🇯🇵",
    "Math: ∑(i=1..n) i = n(n+1)/2 ✔",
    "𝓕𝓪𝓷𝓬𝔂 𝓽𝓮𝔁𝓽 from a font generator",
    "Zalgo t̷̢e̶͝x̸̛t̴ is still text",
    "ok",
    "👍",
    "🔥🔥🔥",
    "Meeting notes:\n1. Budget\n2. Timeline\n3. Q&A",
    "Tabs\tand  double  spaces   are kept",
    "Quote: \"to be, or not to be\" — and a backslash \\ too",
    "Xin chào các bạn! 🇻🇳",
    "Merhaba arkadaşlar, nasılsınız?",
    "안녕하세요 여러분 😊",
    "สวัสดีครับ ทุกคน",
    "Dzień dobry! Śniadanie gotowe 🥐",
];

/// Texts used as new content when a message is edited.
pub(crate) const EDIT_SUFFIXES: &[&str] = &[
    " (edited)",
    " — fixed a typo",
    " ✏️",
    " UPD: never mind",
    " (исправлено)",
    " 追記：時間変更",
];

pub(crate) const GROUP_TITLES: &[&str] = &[
    "Rust Developers 🦀",
    "Клуб любителей кофе ☕",
    "東京の週末",
    "Family 👨‍👩‍👧‍👦",
    "Football fans ⚽",
    "مجموعة القراءة 📚",
    "Hiking & Trails 🏔️",
    "Startup founders",
];

pub(crate) const FORUM_TOPICS: &[&str] = &[
    "Announcements 📣",
    "Help & Support",
    "Off-topic 🎲",
    "Вопросы",
];

/// Telegram's six allowed forum topic icon colours.
pub(crate) const TOPIC_COLORS: &[u32] = &[
    7_322_096, 16_766_590, 13_338_331, 9_367_192, 16_749_490, 16_478_047,
];

pub(crate) const CHANNEL_TITLES: &[&str] =
    &["Tech News Daily 📰", "Новости города", "Daily Photo 📷"];

pub(crate) const CHANNEL_POSTS: &[&str] = &[
    "Breaking: a new version is out. Changelog in the comments 👇",
    "Photo of the day 📸",
    "Погода на завтра: +5…+8 °C, без осадков ☁️",
    "Weekly digest #42 — the five links you should not miss",
    "📢 Service window tonight 02:00–03:00 UTC",
];

pub(crate) const CAPTIONS: &[&str] = &[
    "Look at this 😍",
    "Sunset from my balcony 🌅",
    "Вот скриншот ошибки",
    "the report, as promised",
    "写真です",
];

pub(crate) const DOCUMENTS: &[(&str, &str)] = &[
    ("report_2025_Q1.pdf", "application/pdf"),
    (
        "budget.xlsx",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ),
    ("notes.txt", "text/plain"),
    ("архив.zip", "application/zip"),
    (
        "slides.pptx",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ),
];

/// (question, options) for polls.
pub(crate) const POLLS: &[(&str, &[&str])] = &[
    ("Where should we meet?", &["Café", "Park", "Online"]),
    (
        "Лучший язык программирования?",
        &["Rust", "Go", "Python", "Другой"],
    ),
    ("Pizza or sushi? 🍕🍣", &["Pizza", "Sushi"]),
    ("次の会議はいつ？", &["月曜日", "水曜日", "金曜日"]),
];

/// Reactions from Telegram's standard emoji set (exact code points Telegram accepts).
pub(crate) const REACTIONS: &[&str] = &[
    "👍", "❤", "🔥", "🎉", "😁", "🤔", "😢", "🙏", "👌", "🤩", "💯", "🏆", "👀",
];

/// Inline keyboard buttons the bot attaches: (text, callback data).
pub(crate) const BUTTONS: &[(&str, &str)] = &[
    ("👍 Like", "vote:up"),
    ("👎 Dislike", "vote:down"),
    ("Next ▶", "page:2"),
    ("Подробнее", "details:17"),
];

pub(crate) const DOMAINS: &[&str] = &["example.org", "docs.rs", "t.me/tgingest", "пример.рф"];
