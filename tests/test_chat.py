"""Chat formatting: Psych-201's user/assistant split, parity with transformers' chat templates, response spans.

The reference split and every chat template's expected text are computed
independently here: the split with ``re.split`` as Psych-201's instruct
analysis does, the rendering with ``transformers``' own ``apply_chat_template``
on a tiny tokenizer built locally (no hub).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jinja2
import pytest
from conftest import RECORDS

import psysim
from psysim.config import ModelConfig
from psysim.data.transcripts import Response, Transcript, parse_markup
from psysim.errors import ModelError, Problem, TemplateError
from psysim.render.chat import ChatTemplate, chat_template_for, to_messages
from psysim.templating import builtin_templates

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

CHATML = builtin_templates("chat")["chatml"].read_text("utf-8")
SMOLLM2 = builtin_templates("chat")["smollm2"].read_text("utf-8")

# Meta-Llama-3-8B-Instruct's template: bos_token, loop.index0, and `| trim` on every message.
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# A multi-line template (trim_blocks/lstrip_blocks matter) using bos_token, eos_token, loop.index0,
# raise_exception, namespace and tojson.
MISTRALISH = """\
{{ bos_token }}
{% set ns = namespace(turns=0) %}
{% for message in messages %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}
    {% if message['role'] == 'user' %}
        {% set ns.turns = ns.turns + 1 %}
[INST {{ ns.turns }} {{ message['role'] | tojson }}] {{ message['content'] }} [/INST]
    {% elif message['role'] == 'assistant' %}
{{ message['content'] }}{{ eos_token }}
    {% else %}
        {{ raise_exception('Only user and assistant roles are supported!') }}
    {% endif %}
{% endfor %}
"""

TEMPLATES = {"smollm2": SMOLLM2, "chatml": CHATML, "llama3": LLAMA3, "mistralish": MISTRALISH}


# -- helpers ---------------------------------------------------------------------------------------
def psych201_messages(text: str) -> list[dict[str, str]]:
    """Psych-201's instruct analysis: text between responses is a user turn, each response an assistant turn."""
    messages: list[dict[str, str]] = []
    buffer = ""
    for part in re.split(r"(<<|>>)", text):
        if part == "<<":
            if buffer:
                messages.append({"role": "user", "content": buffer})
            buffer = ""
        elif part == ">>":
            if buffer:
                messages.append({"role": "assistant", "content": buffer})
            buffer = ""
        else:
            buffer += part
    if buffer:
        messages.append({"role": "user", "content": buffer})
    return messages


def transcript(text: str, participant: str = "x") -> Transcript:
    spans, errors = parse_markup(text)
    assert errors == []
    responses = tuple(Response(i, text[s:e], s, e) for i, (s, e) in enumerate(spans))
    return Transcript(participant, "exp", text, responses)


def tiny_tokenizer(chat_template: str | None = None):
    """A PreTrainedTokenizerFast over a four-word vocabulary, built without the hub."""
    model = tokenizers.models.WordLevel({"[UNK]": 0, "<s>": 1, "</s>": 2, "A": 3}, unk_token="[UNK]")
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="[UNK]")
    if chat_template is not None:
        hf.chat_template = chat_template
    return hf


def special_tokens(hf) -> dict[str, str]:
    return {"bos_token": hf.bos_token, "eos_token": hf.eos_token}


def assistant_contents(messages: list[dict[str, str]]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "assistant"]


TEXTS = [
    RECORDS[0]["text"],
    "<<A>> first, then text.\n",
    "Two in a row: <<A>><<B>> and the end",
    "Ends with a response: <<left>>",
    "Multi-line\ncontext\n\n  with spaces  <<  padded >>\ttab << x\n>>\n\n",
    "Arrows > and < inside <<a > b>> stay; <<<c>> too>",
    "Unicode: café ☕ <<ja>> 日本語\n",
]


# -- the Psych-201 split ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text", TEXTS)
def test_to_messages_is_psych201_split(text):
    assert to_messages(transcript(text)) == psych201_messages(text)


@pytest.mark.parametrize("text", TEXTS)
def test_persona_is_prepended_to_the_first_user_message(text):
    persona = "Interviewer: What is your age?\nInterviewee: 31.0\n\n"
    # Prepending the persona to the text and then splitting puts it at the start of the first user
    # message (a message of its own when the transcript opens with a response).
    assert to_messages(transcript(text), persona) == psych201_messages(persona + text)


def test_toy_split_pinned():
    assert to_messages(transcript(RECORDS[0]["text"]), "P\n") == [
        {"role": "user", "content": "P\nPick A or B. You pick "},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": ". Again? You pick "},
        {"role": "assistant", "content": "B"},
        {"role": "user", "content": ".\n"},
    ]
    assert to_messages(transcript("<<A>><<B>>")) == [
        {"role": "assistant", "content": "A"},
        {"role": "assistant", "content": "B"},
    ]


def test_experiment_chat_is_the_split_through_the_template(toy):
    exp = psysim.load_experiment(toy.yaml)
    template = ChatTemplate(CHATML)
    for record in RECORDS:
        pid = record["participant"]
        for cond in ("no_persona", "persona", "shuffled_persona"):
            prompt = exp.render(pid, cond, format="chat")
            messages = psych201_messages(prompt.persona + record["text"])
            assert prompt.text == template.render(messages).text
            assert prompt.text == "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
            assert [prompt.text[s:e] for s, e in prompt.spans] == assistant_contents(messages) == list(prompt.responses)


# -- parity with transformers -------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TEMPLATES))
@pytest.mark.parametrize("persona", ["", "Interviewer: What is your age?\nInterviewee: 31.0\n\n"], ids=["bare", "persona"])
def test_chat_template_renders_like_transformers(name, persona):
    source = TEMPLATES[name]
    hf = tiny_tokenizer(source)
    template = ChatTemplate(source, special_tokens=special_tokens(hf))
    texts = [r["text"] for r in RECORDS] + [t for t in TEXTS if "<<A>><<B>>" not in t]
    for text in texts:
        messages = to_messages(transcript(text), persona)
        if name == "mistralish" and messages[0]["role"] != "user":
            continue  # that template requires a user turn first; see the raise_exception test
        expected = hf.apply_chat_template(messages, tokenize=False)
        if name == "llama3" and any(c != c.strip() for c in assistant_contents(messages)):
            # Llama 3 trims every message: a response with outer spaces would be misplaced, so it is refused.
            with pytest.raises(TemplateError, match="changes or drops message content"):
                template.render(messages)
            continue
        rendering = template.render(messages)
        assert rendering.text == expected, (name, text)
        assert [rendering.text[s:e] for s, e in rendering.spans] == assistant_contents(messages)
        assert all(a[1] <= b[0] for a, b in zip(rendering.spans, rendering.spans[1:], strict=False))


def test_chat_template_texts_pinned():
    messages = to_messages(transcript(RECORDS[0]["text"]))
    smol = ChatTemplate(SMOLLM2).render(messages)
    assert smol.text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nPick A or B. You pick <|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
        "<|im_start|>user\n. Again? You pick <|im_end|>\n<|im_start|>assistant\nB<|im_end|>\n"
        "<|im_start|>user\n.\n<|im_end|>\n"
    )
    first = smol.text.index("assistant\nA<") + len("assistant\n")
    second = smol.text.index("assistant\nB<") + len("assistant\n")
    assert smol.spans == [(first, first + 1), (second, second + 1)]
    llama = ChatTemplate(LLAMA3, special_tokens={"bos_token": "<|begin_of_text|>"}).render(messages)
    assert llama.text == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nPick A or B. You pick<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n. Again? You pick<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nB<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n.<|eot_id|>"
    )
    mistral = ChatTemplate(MISTRALISH, special_tokens={"bos_token": "<s>", "eos_token": "</s>"}).render(messages)
    assert mistral.text == (
        '<s>\n[INST 1 "user"] Pick A or B. You pick  [/INST]\nA</s>\n'
        '[INST 2 "user"] . Again? You pick  [/INST]\nB</s>\n'
        '[INST 3 "user"] .\n [/INST]\n'
    )
    assert [mistral.text[s:e] for s, e in mistral.spans] == ["A", "B"]


def test_raise_exception_is_a_template_error_like_in_transformers():
    hf = tiny_tokenizer(MISTRALISH)
    messages = to_messages(transcript("Two in a row: <<A>><<B>> and the end"))

    with pytest.raises(jinja2.TemplateError, match="Conversation roles must alternate"):
        hf.apply_chat_template(messages, tokenize=False)
    with pytest.raises(TemplateError) as info:
        ChatTemplate(MISTRALISH, name="mistralish.jinja", special_tokens=special_tokens(hf)).render(
            messages, where="participant 9"
        )
    assert info.value.message == "cannot render chat template mistralish.jinja"
    assert info.value.problems == (
        Problem(
            "Conversation roles must alternate user/assistant/user/assistant/...",
            file="mistralish.jinja",
            where="participant 9",
        ),
    )


def test_missing_special_token_is_a_template_error():
    with pytest.raises(TemplateError) as info:
        ChatTemplate(LLAMA3, name="llama3.jinja").render([{"role": "user", "content": "hi"}])
    assert info.value.problems == (Problem("'bos_token' is undefined", file="llama3.jinja"),)


def test_syntax_error_is_a_located_template_error():
    with pytest.raises(TemplateError) as info:
        ChatTemplate("{% for m in messages %}\n{{ m.content }\n{% endfor %}", name="broken.jinja")
    assert info.value.message == "chat template has a syntax error: broken.jinja"
    assert len(info.value.problems) == 1
    assert info.value.problems[0].file == "broken.jinja" and info.value.problems[0].line == 2


def test_template_checking_tools_renders_like_transformers():
    source = (
        "{%- if tools %}<|tools|>{{ tools | tojson }}\n{%- endif %}"
        "{%- if documents %}<|docs|>\n{%- endif %}"
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    )
    hf = tiny_tokenizer(source)
    messages = to_messages(transcript(RECORDS[0]["text"]))
    expected = hf.apply_chat_template(messages, tokenize=False)
    assert expected.startswith("<|user|>\nPick A or B.")
    rendering = ChatTemplate(source).render(messages)
    assert rendering.text == expected


# -- templates that change content ------------------------------------------------------------------
TRIM = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] | trim }}<|end|>{% endfor %}"
UPPER = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] | upper }}<|end|>{% endfor %}"
DROP = "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}{% endfor %}"
TWICE = "{% for m in messages %}{{ m['content'] }}{% endfor %}|{{ messages[-1]['content'] }}"


def test_trim_that_changes_an_assistant_message_is_refused():
    messages = [{"role": "user", "content": "Say: "}, {"role": "assistant", "content": " A "}]
    with pytest.raises(TemplateError) as info:
        ChatTemplate(TRIM, name="trim.jinja").render(messages, where="participant 3")
    assert info.value.message == (
        "chat template trim.jinja changes or drops message content, so response positions cannot be known"
    )
    assert [(p.file, p.where) for p in info.value.problems] == [("trim.jinja", "participant 3")]


def test_trim_that_leaves_assistant_messages_unchanged_is_accepted():
    # Trimming user messages is fine: only the responses' positions matter.
    messages = [{"role": "user", "content": " Say: "}, {"role": "assistant", "content": "A"}, {"role": "user", "content": "\n"}]
    rendering = ChatTemplate(TRIM).render(messages)
    assert rendering.text == "<|user|>Say:<|end|><|assistant|>A<|end|><|user|><|end|>"
    assert rendering.spans == [(len("<|user|>Say:<|end|><|assistant|>"), len("<|user|>Say:<|end|><|assistant|>A"))]
    assert tiny_tokenizer(TRIM).apply_chat_template(messages, tokenize=False) == rendering.text


def test_upper_that_leaves_content_unchanged_is_accepted():
    messages = [{"role": "user", "content": "PICK: "}, {"role": "assistant", "content": "A"}]
    rendering = ChatTemplate(UPPER).render(messages)
    assert rendering.text == "<|user|>PICK: <|end|><|assistant|>A<|end|>"
    assert rendering.spans == [(34, 35)]
    assert rendering.text[34:35] == "A"


def test_upper_that_changes_an_assistant_message_is_refused():
    messages = [{"role": "user", "content": "pick: "}, {"role": "assistant", "content": "a"}]
    with pytest.raises(TemplateError, match="changes or drops message content"):
        ChatTemplate(UPPER).render(messages)


@pytest.mark.parametrize("source", [DROP, TWICE], ids=["drop", "twice"])
def test_template_that_drops_or_repeats_responses_is_refused(source):
    messages = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "A"}]
    with pytest.raises(TemplateError, match="changes or drops message content"):
        ChatTemplate(source).render(messages)


def test_reserved_private_use_characters_are_refused():
    with pytest.raises(TemplateError) as info:
        ChatTemplate(CHATML).render([{"role": "user", "content": "x\ue000y"}], where="participant 4")
    assert info.value.message == "text contains a private-use character psysim reserves for chat rendering"
    assert info.value.problems == (Problem("remove U+E000/U+E001 from the data", where="participant 4"),)


def test_python_error_in_chat_template_is_a_template_error():
    with pytest.raises(TemplateError):
        ChatTemplate("{% for m in messages %}{{ m['content'] + 1 }}{% endfor %}").render([{"role": "user", "content": "x"}])


# -- experiment level and the CLI -------------------------------------------------------------------
P1_CHAT_NO_PERSONA = (
    "<|im_start|>user\nPick A or B. You pick <|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
    "<|im_start|>user\n. Again? You pick <|im_end|>\n<|im_start|>assistant\nB<|im_end|>\n"
    "<|im_start|>user\n.\n<|im_end|>\n"
)


def test_cli_render_chat_text_only(toy, run_cli):
    r = run_cli("render", str(toy.yaml), "--chat", "--text-only", "-c", "no_persona")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == P1_CHAT_NO_PERSONA
    exp = psysim.load_experiment(toy.yaml)
    assert r.stdout == exp.render("p1", "no_persona", format="chat").text


def test_cli_render_chat_json(toy, run_cli):
    r = run_cli("render", str(toy.yaml), "--chat", "--json", "-c", "no_persona")
    assert r.exit_code == 0, r.stderr
    payload = json.loads(r.stdout)
    assert payload == {
        "participant": "p1",
        "experiment": "toy",
        "condition": "no_persona",
        "format": "chat",
        "persona_of": None,
        "text": P1_CHAT_NO_PERSONA,
        "spans": [[72, 73], [152, 153]],
        "responses": ["A", "B"],
        "context_dropped": 0,
        "context": "context not checked: unknown model 'tiny': not a registry name, a local model folder or .gguf file",
    }

    r = run_cli("render", str(toy.yaml), "--chat", "--json", "-p", "p2")
    assert r.exit_code == 0, r.stderr
    payload = json.loads(r.stdout)
    assert [p["condition"] for p in payload] == ["no_persona", "persona", "shuffled_persona"]
    exp = psysim.load_experiment(toy.yaml)
    for p in payload:
        assert p["participant"] == "p2" and p["format"] == "chat"
        assert [p["text"][s:e] for s, e in p["spans"]] == p["responses"] == ["B", "B"]
        assert p["text"] == exp.render("p2", p["condition"], format="chat").text
    assert payload[1]["text"].startswith("<|im_start|>user\nInterviewer: What is your gender?\nInterviewee: Male\n\nPick A")
    assert payload[2]["persona_of"] == exp.shuffle["p2"]


def test_cli_render_raw_text_only_is_the_jsonl_text(toy, run_cli):
    r = run_cli("render", str(toy.yaml), "--text-only", "-c", "no_persona", "-p", "p3")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == RECORDS[2]["text"]


def write_model_folder(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


MODEL_YAML = """\
name: toy
seed: 7
data:
  format: psych201
  path: data.jsonl
cohort:
  schema: schema.json
models:
  - name: local
    source: {source}
    formats: [raw, chat]
{extra}conditions: [no_persona, persona]
"""


def test_model_folder_chat_template_is_picked_up(toy, run_cli):
    hf = tiny_tokenizer(LLAMA3)
    write_model_folder(toy.folder / "model", {"chat_template": LLAMA3, "bos_token": "<s>", "eos_token": "</s>"})
    toy.write_yaml(MODEL_YAML.format(source="model", extra=""))

    template = chat_template_for(ModelConfig(name="local", source="model"), toy.folder)
    assert template.source == LLAMA3
    assert template.name == "model/tokenizer_config.json"
    assert template.special_tokens == {"bos_token": "<s>", "eos_token": "</s>"}

    exp = psysim.load_experiment(toy.yaml)
    for record in RECORDS:
        for cond in ("no_persona", "persona"):
            prompt = exp.render(record["participant"], cond, format="chat")
            messages = psych201_messages(prompt.persona + record["text"])
            assert prompt.text == hf.apply_chat_template(messages, tokenize=False)
            assert prompt.text.startswith("<s><|start_header_id|>user<|end_header_id|>\n\n")
            assert [prompt.text[s:e] for s, e in prompt.spans] == list(prompt.responses)

    r = run_cli("render", str(toy.yaml), "--chat", "--text-only", "-c", "no_persona")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == hf.apply_chat_template(psych201_messages(RECORDS[0]["text"]), tokenize=False)


def test_chat_template_key_wins_over_the_model_folder(toy):
    write_model_folder(toy.folder / "model", {"chat_template": LLAMA3, "bos_token": "<s>"})
    toy.write_yaml(MODEL_YAML.format(source="model", extra="    chat_template: chatml\n"))
    exp = psysim.load_experiment(toy.yaml)
    assert exp.render("p1", "no_persona", format="chat").text == P1_CHAT_NO_PERSONA
    template = chat_template_for(exp.model("local"), toy.folder)
    assert template.source == CHATML


def test_chat_template_jinja_file_in_model_folder(toy):
    folder = toy.folder / "model"
    folder.mkdir()
    (folder / "chat_template.jinja").write_text(CHATML, encoding="utf-8")
    toy.write_yaml(MODEL_YAML.format(source="model", extra=""))
    exp = psysim.load_experiment(toy.yaml)
    assert exp.render("p1", "no_persona", format="chat").text == P1_CHAT_NO_PERSONA


def test_save_pretrained_model_folder_renders_like_transformers(toy):
    hf = tiny_tokenizer(LLAMA3)
    hf.save_pretrained(toy.folder / "model")
    assert (toy.folder / "model" / "chat_template.jinja").is_file()
    toy.write_yaml(MODEL_YAML.format(source="model", extra=""))
    exp = psysim.load_experiment(toy.yaml)  # today: TemplateError, 'bos_token' is undefined
    reloaded = transformers.PreTrainedTokenizerFast.from_pretrained(str(toy.folder / "model"))
    prompt = exp.render("p1", "no_persona", format="chat")
    assert prompt.text == reloaded.apply_chat_template(psych201_messages(RECORDS[0]["text"]), tokenize=False)


def test_model_without_any_chat_template_is_a_model_error(toy, run_cli):
    write_model_folder(toy.folder / "model", {"bos_token": "<s>"})
    toy.write_yaml(MODEL_YAML.format(source="model", extra=""))
    with pytest.raises(ModelError) as info:
        psysim.load_experiment(toy.yaml)
    assert info.value.message.startswith("no chat template for a model that uses the chat format")
    assert "model 'local' has no chat template psysim can find without loading it" in info.value.problems[0].message
    assert info.value.problems[0].where == "models[0]"
    r = run_cli("validate", str(toy.yaml))
    assert r.exit_code == 2 and "Traceback" not in r.stderr
