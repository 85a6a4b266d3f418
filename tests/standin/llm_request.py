"""The LLM request a hosted nullclawd sends, byte for byte (shape, not wording).

Read from the upstream source (NullClaw 2026.2.26).  For one Telegram or /webhook
message the gateway's agent makes one blocking, non-streaming call
(``agent/root.zig``: streaming only when a stream callback is set, i.e. the CLI) to
the provider named before the first "/" of ``agents.defaults.model.primary``.  A
provider with a ``base_url`` is OpenAI-compatible (``providers/compatible.zig``):

* ``POST <base_url>/chat/completions`` (no trailing "/" doubled; a base URL already
  ending in /chat/completions is used as is);
* spawned as ``curl -s -X POST -H "Content-Type: application/json" --max-time 300
  -H "authorization: Bearer <api_key>" --data-binary @- <url>``, the body on stdin
  (``http_util.zig``); curl adds ``Host``, ``User-Agent: curl/<version>``,
  ``Accept: */*`` and ``Content-Length``;
* a compact JSON body, keys in this order: ``model`` (the part after "<provider>/",
  written unescaped), ``messages`` (a system message, then the session history,
  then the user text), ``temperature`` (``0.70``: two decimals), ``max_tokens``
  (8192 for the usual models), ``tools`` (14 function schemas),
  ``tool_choice`` ("auto"), ``stream`` (false).

The system prompt (~30 KB) is made of the workspace files, the tool list (twice),
safety rules, the date and the model name.  Its wording here is generated filler
(deterministic); sizes and structure follow upstream.  The 14 tool names are the
upstream ones; their descriptions and schemas are our own, of similar size.

The stand-in image embeds ``template()`` at ``TEMPLATE_PATH`` and fills in the two
placeholders, so a test can compare what the meter received with ``request_body``.
A benchmark may use ``request_body`` / ``request_headers`` directly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

__all__ = [
    "MAX_TOKENS",
    "MODEL_PLACEHOLDER",
    "TEMPERATURE",
    "TEMPLATE_PATH",
    "TOOL_NAMES",
    "USER_AGENT",
    "USER_PLACEHOLDER",
    "chat_completions_url",
    "curl_argv",
    "json_escape",
    "request_body",
    "request_dict",
    "request_headers",
    "split_primary",
    "system_prompt",
    "template",
    "tools",
    "user_text_from_webhook",
]

#: where the stand-in image carries ``template()``
TEMPLATE_PATH = "/usr/local/share/nullclaw/request.json"
#: placeholders in ``template()``: safe in JSON strings, found nowhere else
MODEL_PLACEHOLDER = "@@NULLCLAW_MODEL@@"
USER_PLACEHOLDER = "@@NULLCLAW_USER_TEXT@@"

#: ``default_temperature`` 0.7, written with two decimals (``{d:.2}``)
TEMPERATURE = "0.70"
#: resolved for openai/*, anthropic/*, google/* ... models (and the default)
MAX_TOKENS = 8192
#: curl's --max-time: ``agent.message_timeout_secs`` default
MAX_TIME_SECONDS = 300
#: upstream image: Alpine 3.23 with ``apk add curl`` (version not pinned upstream)
USER_AGENT = "curl/8.17.0"
WORKSPACE_DIR = "/nullclaw-data/workspace"
#: the prompt's date line changes every minute upstream; fixed here
FIXED_DATETIME = "2026-02-26 12:00 UTC"

TOOL_NAMES = (
    "shell",
    "file_read",
    "file_write",
    "file_edit",
    "git_operations",
    "image_info",
    "memory_store",
    "memory_recall",
    "memory_list",
    "memory_forget",
    "delegate",
    "schedule",
    "spawn",
    "screenshot",
)


# --- JSON the way nullclawd writes it -------------------------------------------------


def json_escape(text: str) -> str:
    """The inside of a JSON string as upstream's appendJsonString writes it: only
    `"`, `\\` and control characters are escaped (\\n \\r \\t, else \\u00xx)."""
    out = []
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# --- deterministic filler ---------------------------------------------------------------

_VOCABULARY = (
    "assistant user message reply memory session workspace file tool channel "
    "telegram owner context history prompt answer question task schedule note "
    "always never prefer keep short clear polite careful exact brief concise "
    "check read write update remember forget summarize explain confirm ask "
    "before after when unless only every daily weekly private public local "
    "data notes list item step plan result error retry limit value setting "
    "language tone style format markdown heading bullet example default rule"
)
_WORDS = tuple(_VOCABULARY.split(" "))


class _Lcg:
    """A tiny fixed PRNG: the same text on every Python version."""

    def __init__(self, seed: int) -> None:
        self.state = seed & 0xFFFFFFFF

    def next(self, bound: int) -> int:
        self.state = (self.state * 1103515245 + 12345) & 0x7FFFFFFF
        return (self.state >> 8) % bound


def _sentence(rng: _Lcg) -> str:
    words = [_WORDS[rng.next(len(_WORDS))] for _ in range(6 + rng.next(10))]
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def _document(title: str, size: int, seed: int) -> str:
    """Markdown of about `size` characters: headings, paragraphs, bullets."""
    rng = _Lcg(seed)
    parts = [f"# {title}", ""]
    length = len(title) + 3
    section = 0
    while length < size:
        section += 1
        kind = rng.next(3)
        if kind == 0:
            block = f"## Section {section}: {_sentence(rng)[:-1].lower()}"
        elif kind == 1:
            block = " ".join(_sentence(rng) for _ in range(2 + rng.next(4)))
        else:
            block = "\n".join(
                f'- {_sentence(rng)} Use `{_WORDS[rng.next(len(_WORDS))]}` "as is".'
                for _ in range(2 + rng.next(3))
            )
        parts += [block, ""]
        length += len(block) + 2
    return "\n".join(parts).strip()[:size].rstrip()


# (file, size in characters): upstream's bootstrap templates, scaled to a ~30 KB prompt
_WORKSPACE_FILES = (
    ("AGENTS.md", 8250),
    ("SOUL.md", 2050),
    ("TOOLS.md", 1050),
    ("IDENTITY.md", 780),
    ("USER.md", 590),
    ("HEARTBEAT.md", 210),
    ("BOOTSTRAP.md", 1800),
)

# name -> (description, {property: (type, description)}, required)
_TOOL_SPECS: dict[str, tuple[str, dict[str, tuple[str, str]], tuple[str, ...]]] = {
    "shell": (
        "Run one command line in the workspace and return what it printed.",
        {
            "command": ("string", "The command line to run"),
            "timeout_secs": ("integer", "Give up after this many seconds"),
            "workdir": ("string", "Directory to run in, inside the workspace"),
        },
        ("command",),
    ),
    "file_read": (
        "Read a text file from the workspace.",
        {
            "path": ("string", "File path, relative to the workspace"),
            "offset": ("integer", "First line to return"),
            "limit": ("integer", "How many lines to return at most"),
        },
        ("path",),
    ),
    "file_write": (
        "Create or replace a file in the workspace.",
        {
            "path": ("string", "File path, relative to the workspace"),
            "content": ("string", "The complete new content of the file"),
            "append": ("boolean", "Add to the end instead of replacing"),
        },
        ("path", "content"),
    ),
    "file_edit": (
        "Replace one exact piece of text in a file.",
        {
            "path": ("string", "File path, relative to the workspace"),
            "old_text": ("string", "The exact text to find; it must occur once"),
            "new_text": ("string", "The text to put in its place"),
            "all": ("boolean", "Replace every occurrence instead of exactly one"),
        },
        ("path", "old_text", "new_text"),
    ),
    "git_operations": (
        "Run a git operation on the repository in the workspace: status, diff, log, "
        "add, commit, branch or checkout.",
        {
            "operation": ("string", "One of status, diff, log, add, commit, branch, checkout"),
            "paths": ("string", "Space-separated paths the operation applies to"),
            "message": ("string", "Commit message, for commit"),
            "branch": ("string", "Branch name, for branch and checkout"),
            "limit": ("integer", "Number of log entries to show"),
            "staged": ("boolean", "For diff: show the staged changes"),
            "create": ("boolean", "For checkout: create the branch first"),
            "format": ("string", "For log: oneline, short or full"),
        },
        ("operation",),
    ),
    "image_info": (
        "Describe an image file: format, width, height and size in bytes.",
        {
            "path": ("string", "Image path, relative to the workspace"),
            "include_base64": ("boolean", "Also return the image data as base64"),
        },
        ("path",),
    ),
    "memory_store": (
        "Remember a fact, preference or note for later conversations. Use a short, "
        "stable key so the entry can be updated or forgotten later; pick the category "
        "that says how long the memory matters: core for lasting facts, daily for "
        "today's notes, conversation for this chat only.",
        {
            "key": ("string", "A short unique key for the entry"),
            "content": ("string", "What to remember"),
            "category": ("string", "core, daily or conversation"),
        },
        ("key", "content"),
    ),
    "memory_recall": (
        "Search the memory for entries matching a query; best matches first.",
        {
            "query": ("string", "Words to search for"),
            "limit": ("integer", "Number of entries to return"),
            "category": ("string", "Only entries of this category"),
        },
        ("query",),
    ),
    "memory_list": (
        "List remembered entries, newest first, optionally of one category only. Use "
        "it to review what is known before storing duplicates.",
        {
            "category": ("string", "core, daily or conversation; all when absent"),
            "limit": ("integer", "Number of entries to return"),
            "offset": ("integer", "Number of entries to skip"),
            "include_content": ("boolean", "Return each entry's content, not just keys"),
            "session_only": ("boolean", "Only entries of the current session"),
            "since": ("string", "Only entries stored after this date (YYYY-MM-DD)"),
        },
        (),
    ),
    "memory_forget": (
        "Delete a remembered entry by its key. Cannot be undone.",
        {"key": ("string", "The key of the entry to delete")},
        ("key",),
    ),
    "delegate": (
        "Hand a self-contained task to another configured agent and wait for its answer.",
        {
            "agent": ("string", "Name of the agent to ask"),
            "prompt": ("string", "The task, with all the context it needs"),
            "context": ("string", "Extra background for the agent"),
        },
        ("agent", "prompt"),
    ),
    "schedule": (
        "Plan a message or task for later: once at a time, or repeatedly with a cron expression.",
        {
            "action": ("string", "create, list, pause, resume or delete"),
            "expression": ("string", "Cron expression such as 0 9 * * 1-5"),
            "at": ("string", "One-off time, ISO 8601"),
            "message": ("string", "What to say or do when the time comes"),
            "id": ("string", "Schedule id, for pause, resume and delete"),
            "timezone": ("string", "IANA time zone of the expression"),
        },
        ("action",),
    ),
    "spawn": (
        "Start a sub-agent in the background for a long task; its result arrives later "
        "as a message in this conversation. Returns the task id at once.",
        {
            "task": ("string", "What the sub-agent should do"),
            "label": ("string", "A short name shown with the result"),
            "timeout_secs": ("integer", "Stop the sub-agent after this many seconds"),
        },
        ("task",),
    ),
    "screenshot": (
        "Take a screenshot of the screen of the machine the assistant runs on and save "
        "it as a PNG file in the workspace; returns the path of the file.",
        {"filename": ("string", "File name for the image, inside the workspace")},
        (),
    ),
}


def _parameters_json(props: dict[str, tuple[str, str]], required: Sequence[str]) -> str:
    schema: dict[str, object] = {
        "type": "object",
        "properties": {k: {"type": t, "description": d} for k, (t, d) in props.items()},
    }
    if required:
        schema["required"] = list(required)
    return _compact(schema)


def _tool_specs() -> list[tuple[str, str, str]]:
    """(name, description, parameters JSON), in upstream's registration order."""
    specs = []
    for name in TOOL_NAMES:
        description, props, required = _TOOL_SPECS[name]
        specs.append((name, description, _parameters_json(props, required)))
    return specs


def tools() -> list[dict[str, object]]:
    """The 14 OpenAI function schemas of the request's ``tools`` key."""
    return [
        {
            "type": "function",
            "function": {"name": n, "description": d, "parameters": json.loads(p)},
        }
        for n, d, p in _tool_specs()
    ]


def _tools_json() -> str:
    items = [
        f'{{"type":"function","function":{{"name":"{json_escape(n)}",'
        f'"description":"{json_escape(d)}","parameters":{p}}}}}'
        for n, d, p in _tool_specs()
    ]
    return "[" + ",".join(items) + "]"


# --- the system prompt ------------------------------------------------------------------


def system_prompt(model: str) -> str:
    """The first-turn system message (upstream: prompt.buildSystemPrompt plus
    dispatcher.buildToolInstructions), ~30 KB for a usual model name."""
    specs = _tool_specs()
    out = [
        "## Project Context\n\n",
        "These files from the workspace describe who you are and how to behave.\n\n",
    ]
    for i, (name, size) in enumerate(_WORKSPACE_FILES):
        out.append(f"### {name}\n\n{_document(name[:-3].title(), size, 1000 + i)}\n\n")
    out.append("### MEMORY.md\n\n[File not found: MEMORY.md]\n\n")
    out.append("## Tools\n\n")
    out += [f"- **{n}**: {d}\n  Parameters: `{p}`\n" for n, d, p in specs]
    out.append("\n## Channel Attachments\n\n")
    out.append(_document("Attachments", 560, 2001).split("\n", 2)[2] + "\n\n")
    out.append("## Capabilities\n\n")
    out.append(
        "- Channels configured: telegram\n"
        "- Memory engines: markdown, sqlite\n"
        f"- Runtime tools: {', '.join(TOOL_NAMES)}\n"
        "- Optional tools disabled: http_request, browser, composio\n\n"
    )
    out.append("## Safety\n\n")
    out.append(_document("Safety", 520, 2002).split("\n", 2)[2] + "\n\n")
    out.append(f"## Workspace\n\nWorking directory: `{WORKSPACE_DIR}`\n\n")
    out.append(f"## Current Date & Time\n\n{FIXED_DATETIME}\n\n")
    out.append(f"## Runtime\n\nOS: macos | Model: {model}\n\n")
    out.append("\n## Tool Use Protocol\n\n")
    out.append(
        "To call a tool, put one JSON object inside <tool_call></tool_call> tags:\n\n"
        '```\n<tool_call>\n{"name": "tool_name", "arguments": {"param": "value"}}\n'
        "</tool_call>\n```\n\n"
    )
    out.append(_document("Protocol", 420, 2003).split("\n", 2)[2] + "\n\n")
    out.append("### Available Tools\n\n")
    out += [f"**{n}**: {d}\nParameters: `{p}`\n\n" for n, d, p in specs]
    return "".join(out)


# --- the request ------------------------------------------------------------------------


def split_primary(primary: str) -> tuple[str, str]:
    """``agents.defaults.model.primary`` -> (provider, model), split at the first "/"."""
    provider, sep, model = primary.partition("/")
    if not sep or not provider or not model:
        raise ValueError(f"not a provider/model reference: {primary!r}")
    return provider, model


def chat_completions_url(base_url: str) -> str:
    base = base_url[:-1] if base_url.endswith("/") else base_url
    return base if base.endswith("/chat/completions") else base + "/chat/completions"


def request_body(
    model: str,
    user_text: str,
    stream: bool = False,
    *,
    history: Iterable[tuple[str, str]] = (),
    max_tokens: int = MAX_TOKENS,
) -> bytes:
    """The exact body bytes for one user message.

    `model` is the part after "meter/".  `history` holds earlier (role, content)
    turns of the same session (the stand-in sends none: each of its calls is a
    first turn).  `stream=True` is what the CLI agent sends (tools are left out
    there); the gateway never streams.
    """
    messages = [("system", system_prompt(model)), *history, ("user", user_text)]
    parts = [
        '{"model":"',
        model,  # upstream writes it unescaped
        '","messages":[',
        ",".join(f'{{"role":"{r}","content":"{json_escape(c)}"}}' for r, c in messages),
        "]",
        f',"temperature":{TEMPERATURE},"max_tokens":{max_tokens}',
    ]
    if not stream:
        parts.append(f',"tools":{_tools_json()},"tool_choice":"auto"')
    parts.append(f',"stream":{"true" if stream else "false"}}}')
    return "".join(parts).encode()


def request_dict(model: str, user_text: str, stream: bool = False) -> dict[str, object]:
    """``request_body`` parsed (note: temperature becomes the float 0.7)."""
    parsed: dict[str, object] = json.loads(request_body(model, user_text, stream))
    return parsed


def template() -> bytes:
    """``request_body`` with placeholders for the model and the (escaped) user text."""
    return request_body(MODEL_PLACEHOLDER, USER_PLACEHOLDER)


def request_headers(api_key: str, body: bytes | None = None) -> dict[str, str]:
    """The headers curl sends (plus Host), in its order; names as upstream writes
    them (``authorization`` in lower case)."""
    headers = {
        "User-Agent": USER_AGENT,
        "Accept": "*/*",
        "Content-Type": "application/json",
        "authorization": f"Bearer {api_key}",
    }
    if body is not None:
        headers["Content-Length"] = str(len(body))
    return headers


def curl_argv(url: str, api_key: str) -> list[str]:
    """The curl command line nullclawd spawns (the body goes to its stdin)."""
    return [
        "curl",
        "-s",
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--max-time",
        str(MAX_TIME_SECONDS),
        "-H",
        f"authorization: Bearer {api_key}",
        "--data-binary",
        "@-",
        url,
    ]


def user_text_from_webhook(body: bytes) -> str:
    """The user text nullclawd takes from a POST /webhook body: the raw inside of
    the first ``"message"`` (else ``"text"``) string, escapes NOT decoded, else
    the whole body (upstream gateway.jsonStringField)."""
    raw = body.decode("utf-8", errors="replace")
    for key in ('"message"', '"text"'):
        pos = raw.find(key)
        if pos < 0:
            continue
        i = pos + len(key)
        while i < len(raw) and raw[i] in " :\t\n\r":
            i += 1
        if i >= len(raw) or raw[i] != '"':
            continue
        i += 1
        start = i
        while i < len(raw):
            if raw[i] == "\\" and i + 1 < len(raw):
                i += 2
                continue
            if raw[i] == '"':
                return raw[start:i]
            i += 1
    return raw
