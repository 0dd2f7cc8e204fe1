"""SpeechGPT prompt text: the system prefix, markers, templates, instruction banks, and the
markup check that every tool building a prompt runs on the text it puts in.

The formats are those of the published SpeechGPT checkpoints and SpeechInstruct files:

* stage 1 (modality adaptation): ``<sosp><u1><u2>…<eosp>``, one utterance a line;
* stage 2 (cross-modal instructions): ``{"prefix": PREFIX, "plain_text": "[Human]:
  {instruction} This is input: {input}<eoh> [SpeechGPT]: {output}<eoa> "}``;
* stage 3 (chain of modality): ``[Human]: <sosp>…<eosp><eoh>. [SpeechGPT]: {transcript};
  [ta] {text answer}; [ua] <sosp>…<eosp><eoa>.`` and the three other input/output
  combinations (see ``chain_of_modality``);
* inference: PREFIX + ``[Human]: {question} <eoh>. [SpeechGPT]: ``.

Text that goes into a prompt must not be able to forge structure: ``check_text`` rejects
any text holding a marker, a unit token or a special token of the usual base tokenizers.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

from sgpt.core.errors import RecordError

# The "meta instruction" of the reference, verbatim (note the two spaces after "University.").
PREFIX = (
    "You are an AI assistant whose name is SpeechGPT.\n"
    "- SpeechGPT is a intrinsic cross-modal conversational language model that is developed "
    "by Fudan University.  SpeechGPT can understand and communicate fluently with human "
    "through speech or text chosen by the user.\n"
    "- It can perceive cross-modal inputs and generate cross-modal outputs.\n"
)

SOSP = "<sosp>"          # start of speech
EOSP = "<eosp>"          # end of speech
HUMAN = "[Human]"        # the user's turn
SPEECHGPT = "[SpeechGPT]"  # the model's turn
EOH = "<eoh>"            # end of the human turn
EOS = "<eos>"            # an added token of the reference vocabulary (unused in its data)
EOA = "<eoa>"            # end of the answer: plain text, NOT an added token
TA = "[ta]"              # chain of modality: the text answer follows
UA = "[ua]"              # chain of modality: the unit (spoken) answer follows

UNIT_MARKERS = (SOSP, EOSP)               # added after the unit tokens (stage-1 vocabulary)
DIALOG_MARKERS = (HUMAN, SPEECHGPT, EOH, EOS)  # added for stage 2 onwards
MARKERS = UNIT_MARKERS + DIALOG_MARKERS


def unit_token(unit: int) -> str:
    return f"<{unit}>"


def added_tokens(k: int, dialog: bool = True) -> list[str]:
    """The tokens SpeechGPT appends to the base vocabulary, in the reference's order."""
    return [unit_token(u) for u in range(k)] + list(UNIT_MARKERS) + (
        list(DIALOG_MARKERS) if dialog else [])


def units_text(units: Iterable[int]) -> str:
    """``<sosp><12><7>…<eosp>``: speech as the LLM sees it."""
    return SOSP + "".join(f"<{u}>" for u in units) + EOSP


# --- the markup check --------------------------------------------------------------------

# Markers of this format (added tokens and the plain-text ones the parsers rely on), unit
# tokens with any digits, and the special tokens of LLaMA-style and ChatML-style tokenizers.
MARKUP = re.compile(
    r"<(?:\d+|sosp|eosp|eoh|eos|eoa|/?s|unk|pad)>"
    r"|\[(?:Human|SpeechGPT|ta|ua|tq)\]"
    r"|<\|[^|<>\s]{1,64}\|>"
)


def find_markup(text: str) -> str | None:
    """The first piece of markup in ``text``, or None when it is plain text."""
    m = MARKUP.search(text)
    return m.group(0) if m else None


def check_text(text: object, field: str, where: str) -> str:
    """``text`` if it is a non-empty string free of markup; else RecordError naming ``where``.

    Markup is refused rather than escaped: no escape would leave the text as it was.
    """
    if not isinstance(text, str):
        raise RecordError(where, f"'{field}' must be a string")
    if not text.strip():
        raise RecordError(where, f"'{field}' is empty")
    found = find_markup(text)
    if found is not None:
        raise RecordError(where, f"'{field}' contains markup {found!r}, which could forge "
                                 "prompt structure; remove it from the text")
    return text


# --- stage 2: cross-modal instructions ----------------------------------------------------

CROSS_MODAL = "[Human]: {instruction} This is input: {input}<eoh> [SpeechGPT]: {output}<eoa> "


def cross_modal(instruction: str, input: str, output: str) -> dict:
    """One SpeechInstruct stage-2 example: ``{"prefix", "plain_text"}``."""
    return {"prefix": PREFIX,
            "plain_text": CROSS_MODAL.format(instruction=instruction, input=input,
                                             output=output)}


# --- stage 3: chain of modality ----------------------------------------------------------

# s = speech, t = text; the first letter is the question's modality, the second the answer's.
# s2s is the published format; the others follow it, dropping what their modalities lack.
CHAIN_OF_MODALITY = {
    "s2s": "[Human]: {q_units}<eoh>. [SpeechGPT]: {q_text}; [ta] {a_text}; [ua] {a_units}<eoa>.",
    "s2t": "[Human]: {q_units}<eoh>. [SpeechGPT]: {q_text}; [ta] {a_text}<eoa>.",
    "t2s": "[Human]: {q_text}<eoh>. [SpeechGPT]: [ta] {a_text}; [ua] {a_units}<eoa>.",
    "t2t": "[Human]: {q_text}<eoh>. [SpeechGPT]: [ta] {a_text}<eoa>.",
}
MODES = tuple(CHAIN_OF_MODALITY)


def chain_of_modality(mode: str, q_text: str, a_text: str, q_units: Sequence[int] = (),
                      a_units: Sequence[int] = ()) -> dict:
    """One SpeechInstruct stage-3 example of ``mode`` (s2s, s2t, t2s or t2t)."""
    plain = CHAIN_OF_MODALITY[mode].format(q_units=units_text(q_units), q_text=q_text,
                                           a_text=a_text, a_units=units_text(a_units))
    return {"prefix": PREFIX, "plain_text": plain}


def cross_modal_prompt(instruction: str, input: str) -> str:
    """An ASR or TTS request as stage 2 trains it: the stage-2 record up to its output,
    PREFIX + ``[Human]: {instruction} This is input: {input}<eoh> [SpeechGPT]: ``."""
    return PREFIX + CROSS_MODAL[:CROSS_MODAL.index("{output}")].format(
        instruction=instruction, input=input)


# --- inference ---------------------------------------------------------------------------

INFERENCE = "[Human]: {question} <eoh>. [SpeechGPT]: "


def task_question(instruction: str, input: str) -> str:
    """The question of an ASR/TTS request: ``{instruction} This is input: {input}``."""
    return f"{instruction} This is input: {input}"


def inference_prompt(question: str) -> str:
    """What the reference feeds the model: PREFIX + ``[Human]: {question} <eoh>. [SpeechGPT]: ``.

    ``question`` is text or ``units_text(...)``; it is not checked here (a unit question is
    markup by design): check free text with ``check_text`` first.
    """
    return PREFIX + INFERENCE.format(question=question)


# --- instruction banks (written for this project) -----------------------------------------

# Speech in, text out: the model hears units and writes the transcript.
ASR_INSTRUCTIONS = (
    "Transcribe this recording into text.",
    "Write down what is said in this audio.",
    "Please convert the following speech into written words.",
    "What does the speaker say? Give me the exact words.",
    "Listen carefully and type out every word you hear.",
    "Turn this spoken clip into a written transcript.",
    "Can you tell me, word for word, what this audio says?",
    "Produce a verbatim transcription of the speech below.",
    "I need this speech written out as text.",
    "Put the words of this recording on paper for me.",
    "Write a transcript of the following utterance.",
    "Please listen to this and write down what you hear.",
    "Convert this voice recording to text, please.",
    "What is being said here? Write it out.",
    "Give me the text version of this spoken sentence.",
    "Type up this audio for me.",
    "Could you transcribe the speech that follows?",
    "Recognize the speech and return it as text.",
    "Write out the spoken words exactly as they are said.",
    "Turn the following audio into plain text.",
    "Please write down this sentence as it is spoken.",
    "Transcribe the speaker's words without changing anything.",
    "Listen to the clip and give me its transcript.",
    "What words are spoken in this recording?",
    "Change this speech into written form.",
    "I would like a written copy of what is said here.",
    "Make a text transcript of the speech input.",
    "Please do speech recognition on this audio.",
    "Can you write down what this person is saying?",
    "Transcribe the following spoken sentence, please.",
    "Render this speech as text.",
    "Note down every word of this recording.",
    "Give me a written record of this utterance.",
    "Please type what you hear in the audio.",
    "Spell out in text what the speaker says.",
    "Convert the spoken input into a sentence of text.",
    "Write the transcript for this piece of speech.",
    "Tell me in writing what was said.",
    "Listen and transcribe.",
    "Please transcribe this.",
    "Could you put this speech into words on the page?",
    "What does this audio say? Answer with the transcript only.",
    "Write down the content of this spoken message.",
    "Take dictation from the following audio.",
    "Turn these spoken words into text for me.",
    "Decode this speech into written English.",
    "Produce the text that matches this recording.",
    "I can't listen to audio right now; please write out what it says.",
    "Transcribe the audio below as accurately as you can.",
    "Write what the speaker is saying in this clip.",
    "Please provide a transcription of this speech.",
    "Capture the spoken words of this recording in text.",
    "Convert this utterance from speech to text.",
    "Can you give me the words spoken in this audio?",
    "Write out this recording word by word.",
    "Please turn the speech you hear into written text.",
    "Listen to this sentence and write it down.",
    "What was said? Please write it out in full.",
    "Generate a transcript for the following speech.",
    "Transcribe what you hear, word for word.",
    "Make this spoken sentence readable as text.",
    "Type out the sentence spoken in this recording.",
    "Could you write down this audio for me, please?",
    "Give me the written form of this speech.",
    "Please recognize the words in this speech.",
    "Write the following spoken words as text.",
    "Turn this voice clip into words I can read.",
    "I need a transcript of this audio clip.",
    "Listen closely and write the sentence down.",
    "Please produce text from this speech.",
    "What is the speaker saying? Write it down exactly.",
    "Convert the following recording into a written sentence.",
    "Write down the words you hear in the speech below.",
    "Transcribe the spoken content of this input.",
    "Can you turn this recording into text?",
    "Put this spoken sentence into writing.",
    "Please give me the transcript of what is spoken.",
    "Listen to the audio and type it out.",
    "Make a written version of this spoken sentence.",
    "Transcribe this speech into English text.",
    "Write out what the voice in this recording says.",
    "Please transcribe the utterance that follows.",
    "Give the exact text of this spoken input.",
    "From this speech, write the words that were said.",
    "Turn the audio input into written words, please.",
    "Can you work out what is said here and write it down?",
    "Recognize this spoken sentence and write it out.",
    "Please write this recording down as text.",
    "What words does this speech contain? Write them out.",
    "Transcribe the following audio for me.",
    "Write the words of this utterance in plain text.",
    "Convert what is spoken here into text.",
    "Listen to the speaker and write down the sentence.",
    "Please put the following speech into text form.",
    "Give me a transcription of this spoken clip.",
    "Type the words spoken in this audio, please.",
    "Write out the speech below as a text sentence.",
    "Please listen and transcribe the sentence.",
    "Turn what you hear into a written sentence.",
    "Could you provide the text of this recording?",
    "Write down exactly what is said, nothing more.",
    "Transcribe this short recording.",
    "Say in writing what this audio contains.",
    "Please convert the audio to a written transcript.",
    "Give me the words of this speech as text.",
    "Write the text of the following spoken sentence.",
    "Can you write a transcript of this speech, please?",
    "Please note down what is spoken in this clip.",
    "Transform this spoken input into text.",
    "Transcribe the speech. Keep every word as spoken.",
)

# Text in, speech out: the model reads text and speaks it as units.
TTS_INSTRUCTIONS = (
    "Read this sentence aloud.",
    "Say the following text out loud.",
    "Please speak these words.",
    "Turn this text into speech.",
    "Could you read the line below aloud for me?",
    "Speak the following sentence.",
    "Convert this text to spoken audio.",
    "Please say this sentence.",
    "Read the following out loud, please.",
    "Give me a spoken version of this text.",
    "Say this for me.",
    "Can you speak this sentence aloud?",
    "Please read out the text below.",
    "Voice the following sentence.",
    "Turn these written words into speech.",
    "I would like to hear this sentence spoken.",
    "Read this text in a clear voice.",
    "Please pronounce the following sentence.",
    "Speak this line out loud.",
    "Synthesize speech for the following text.",
    "Say the sentence below, please.",
    "Could you say this out loud?",
    "Please turn the following text into spoken words.",
    "Read aloud the sentence that follows.",
    "Give this text a voice.",
    "Speak the words written below.",
    "Convert the following sentence into speech, please.",
    "Please read this to me.",
    "Say these words aloud.",
    "Produce speech that says the following.",
    "Can you read this sentence to me?",
    "Read the following sentence naturally.",
    "Please voice this text.",
    "Say out loud what is written here.",
    "Turn this sentence into audio.",
    "Speak this text, please.",
    "Let me hear you say this sentence.",
    "Read this line for me, please.",
    "Please say the following words out loud.",
    "Make this text into speech.",
    "Could you speak the text below?",
    "Read the words below aloud.",
    "Please produce a spoken version of this sentence.",
    "Say this text in your voice.",
    "Convert the written sentence into spoken form.",
    "Speak the following aloud, please.",
    "Please read this sentence out.",
    "Say the following, clearly and naturally.",
    "Turn the text below into a spoken sentence.",
    "Can you say the following text?",
    "Read out this sentence, please.",
    "Please give voice to the following text.",
    "Speak what is written below.",
    "Say this line aloud for me.",
    "Transform this text into speech.",
    "I need this text read aloud.",
    "Please speak the following words clearly.",
    "Read the sentence below in your own voice.",
    "Say the text that follows.",
    "Could you read this out for me?",
    "Turn the following words into spoken audio.",
    "Please say this out loud.",
    "Speak this sentence for me.",
    "Read the following text aloud.",
    "Generate speech for this sentence.",
    "Please read the line that follows.",
    "Say these words for me, please.",
    "Can you turn this text into speech?",
    "Read this aloud so I can hear it.",
    "Please convert the sentence below to speech.",
    "Speak out the following text.",
    "Say the sentence written here.",
    "Give me this sentence as speech.",
    "Read this sentence out loud, please.",
    "Please speak the text below.",
    "Could you voice the following sentence?",
    "Turn this line of text into speech.",
    "Pronounce the following text aloud.",
    "Say this sentence in a natural voice.",
    "Please read the following words.",
    "Make a spoken recording of this text.",
    "Speak the sentence below, please.",
    "Read this out.",
    "Can you pronounce this sentence for me?",
    "Please turn this into speech.",
    "Say aloud the following sentence.",
    "Convert these words into speech.",
    "Read the text below to me, please.",
    "Speak these words out loud.",
    "Please say the text below aloud.",
    "I want to hear this text spoken.",
    "Turn the sentence that follows into speech.",
    "Read the following line aloud.",
    "Please produce speech for this text.",
    "Say the following sentence out loud.",
    "Could you read the following text aloud, please?",
    "Speak this short text.",
    "Please read these words out loud.",
    "Turn this written sentence into a spoken one.",
    "Say what this sentence says, out loud.",
    "Read this sentence clearly.",
    "Please speak the sentence that follows.",
    "Give a spoken reading of this text.",
    "Can you speak these words for me?",
    "Convert the text that follows into audio.",
    "Please read aloud the following words.",
    "Say this text out loud, please.",
    "Read the sentence below as speech.",
)

TASKS = ("asr", "tts")
INSTRUCTIONS = {"asr": ASR_INSTRUCTIONS, "tts": TTS_INSTRUCTIONS}


def choose(options: Sequence[str], seed: int, *key: str) -> str:
    """One of ``options``, chosen by a hash of the seed and ``key``.

    The same record gets the same choice whatever order, shard or machine it is processed
    in: the choice depends on nothing else.
    """
    data = "\0".join([str(seed), *key]).encode("utf-8")
    digest = hashlib.blake2b(data, digest_size=8).digest()
    return options[int.from_bytes(digest, "big") % len(options)]
