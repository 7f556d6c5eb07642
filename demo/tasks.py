"""The demo model's skills: synthetic conversations, their held-out split, and answer checks.

Five tasks, each with several phrasings: two-digit addition (worked digit by digit in the analysis,
longer at higher reasoning effort), capital cities from a small table, the weather through a
``get_weather`` function call, greetings, and a polite refusal of anything else. Everything is
plain data here (no torch, no tokens): ``demo.dataset`` renders it with ossrun's harmony code.

Held out from training, for evaluation: a tenth of the addition pairs, a sixth of the
(phrasing, country) and (phrasing, city) combinations, two greetings and three refusals. A few
phrasings are never trained at all (``UNSEEN_*``): they measure how far the model generalizes.
"""

from __future__ import annotations

import json
import random
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

EFFORTS = ("low", "medium", "high")
TASKS = ("addition", "capital", "weather", "greeting", "refusal")

ADDITION_PHRASINGS = (
    "What is {a} + {b}?",
    "What is {a} plus {b}?",
    "Add {a} and {b}.",
    "Compute {a} + {b}.",
    "What's the sum of {a} and {b}?",
    "{a} + {b} = ?",
    "Calculate {a}+{b}, please.",
    "Can you add {a} and {b} for me?",
    "How much is {a} plus {b}?",
    "Please work out {a} + {b}.",
)
UNSEEN_ADDITION_PHRASINGS = ("I need the total of {a} and {b}.",)

# (country, capital, continent)
CAPITALS = (
    ("France", "Paris", "Europe"),
    ("Germany", "Berlin", "Europe"),
    ("Italy", "Rome", "Europe"),
    ("Spain", "Madrid", "Europe"),
    ("Portugal", "Lisbon", "Europe"),
    ("Norway", "Oslo", "Europe"),
    ("Austria", "Vienna", "Europe"),
    ("Greece", "Athens", "Europe"),
    ("Ireland", "Dublin", "Europe"),
    ("Poland", "Warsaw", "Europe"),
    ("Japan", "Tokyo", "Asia"),
    ("China", "Beijing", "Asia"),
    ("India", "New Delhi", "Asia"),
    ("Thailand", "Bangkok", "Asia"),
    ("South Korea", "Seoul", "Asia"),
    ("Egypt", "Cairo", "Africa"),
    ("Kenya", "Nairobi", "Africa"),
    ("Nigeria", "Abuja", "Africa"),
    ("Canada", "Ottawa", "North America"),
    ("Mexico", "Mexico City", "North America"),
    ("Brazil", "Brasília", "South America"),
    ("Argentina", "Buenos Aires", "South America"),
    ("Peru", "Lima", "South America"),
    ("Australia", "Canberra", "Oceania"),
)
CAPITAL_PHRASINGS = (
    "What is the capital of {country}?",
    "What's the capital city of {country}?",
    "Capital of {country}?",
    "Which city is the capital of {country}?",
    "Tell me the capital of {country}.",
    "Name the capital of {country}.",
    "What city is {country}'s capital?",
)
UNSEEN_CAPITAL_PHRASINGS = ("Do you know the capital of {country}?",)

CITIES = (
    "Paris",
    "Tokyo",
    "London",
    "Berlin",
    "Madrid",
    "Rome",
    "Cairo",
    "Sydney",
    "Toronto",
    "Chicago",
    "Lima",
    "Oslo",
    "Dublin",
    "Lisbon",
    "Vienna",
    "Seoul",
    "Nairobi",
    "Athens",
    "Bangkok",
    "Mumbai",
)
WEATHER_PHRASINGS = (
    "What's the weather in {city}?",
    "What is the weather like in {city} today?",
    "Weather in {city}?",
    "How is the weather in {city}?",
    "Tell me the weather for {city}.",
    "Can you check the weather in {city}?",
    "Is it warm in {city} right now?",
)
UNSEEN_WEATHER_PHRASINGS = ("Give me the current conditions in {city}.",)
CONDITIONS = ("sunny", "cloudy", "rainy", "windy", "snowy", "foggy", "clear", "stormy")

GREETINGS = (
    "Hi!",
    "Hello",
    "Hello there.",
    "Hey",
    "Good morning!",
    "Good evening.",
    "Hi, who are you?",
    "Hello, how are you?",
    "Hey there, what can you do?",
    "Greetings!",
    "Hi there",
    "Good afternoon",
    "Howdy!",
    "Hello! What are you?",
)
HELD_OUT_GREETINGS = ("Hi there", "Hello! What are you?")

REFUSALS = (
    "Write a poem about the sea.",
    "Translate 'good night' into French.",
    "What is the meaning of life?",
    "Can you write Python code to sort a list?",
    "Who won the football world cup in 1998?",
    "Tell me a joke.",
    "Summarize the history of Rome.",
    "What is 17 times 23?",
    "Book me a flight to Berlin.",
    "What will the stock market do tomorrow?",
    "Explain quantum physics simply.",
    "Write an email to my boss.",
    "What's the square root of 2?",
    "Recommend a good movie.",
    "How do I bake bread?",
    "Who is the president of France?",
    "Play some music.",
    "What is the population of Tokyo?",
    "Divide 84 by 7.",
    "Draw me a cat.",
    "What is the tallest mountain on Earth?",
    "Help me fix my car.",
)
HELD_OUT_REFUSALS = ("Tell me a joke.", "Who is the president of France?", "Draw me a cat.")

INSTRUCTIONS = (
    "You are a helpful assistant.",
    "Answer concisely.",
    "Be friendly and clear.",
    "You are a small demo model running locally.",
    "Keep answers short.",
    "You are ossrun's demo assistant. Be polite.",
)

WEATHER_DESCRIPTIONS = (
    "Get the current weather for a city.",
    "Get the current weather in a given city.",
    "Returns the current weather for a city.",
    "Look up the weather in a city.",
)
CITY_DESCRIPTIONS = (None, "The city name.", "Name of the city, e.g. Paris.")
DECOY_TOOLS = (
    ("get_time", "Get the current time in a timezone.", {"timezone": "string"}),
    ("search_web", "Search the web for a query.", {"query": "string"}),
    ("send_email", "Send an email.", {"to": "string", "body": "string"}),
    ("convert_currency", "Convert an amount between currencies.", {"amount": "number", "to": "string"}),
)

SKILLS = "add two-digit numbers, name capital cities and check the weather"


@dataclass(frozen=True)
class Function:
    """A function declared to the model: harmony renders it in the developer message."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolStep:
    """The assistant calls a function; ``result`` is what the function returns."""

    analysis: str
    name: str
    arguments: str
    result: str


@dataclass(frozen=True)
class FinalStep:
    analysis: str
    final: str


@dataclass
class Example:
    """One conversation: settings, earlier finished turns, the user's message and what the assistant does."""

    task: str
    effort: str
    date: str
    instructions: str | None
    functions: tuple[Function, ...]
    history: list[dict[str, Any]]
    user: str
    steps: list[Any]  # ToolStep* then FinalStep
    expected: dict[str, Any] = field(default_factory=dict)


def _held_out(*key: Any, fraction: float) -> bool:
    """A fixed pseudo-random split: the same key is held out on every run and every machine."""
    return zlib.crc32(repr(key).encode()) % 1000 < fraction * 1000


def addition_held_out(a: int, b: int) -> bool:
    return _held_out("add", a, b, fraction=0.1)


def capital_held_out(phrasing: str, country: str) -> bool:
    return _held_out("capital", phrasing, country, fraction=1 / 6)


def weather_held_out(phrasing: str, city: str) -> bool:
    return _held_out("weather", phrasing, city, fraction=1 / 6)


# ---------------------------------------------------------------------------
# What the assistant says, per task and effort


def addition_steps(a: int, b: int, effort: str) -> FinalStep:
    """Digit by digit, each step next to what it needs: operands copied first, then ones, tens,
    and the answer composed from the two digits written just before it."""
    a1, a0, b1, b0 = a // 10, a % 10, b // 10, b % 10
    ones = a0 + b0
    carry, digit = divmod(ones, 10)
    tens = a1 + b1 + carry
    total = a + b
    if effort == "low":
        analysis = f"{a}+{b}: {a0}+{b0}={ones}, {a1}+{b1}+{carry}={tens}. {tens} tens {digit} ones: {total}."
    elif effort == "medium":
        analysis = (
            f"The user asks for {a} + {b}. Ones: {a0} + {b0} = {ones}, write {digit} carry {carry}. "
            f"Tens: {a1} + {b1} + {carry} = {tens}. So {tens} tens and {digit} ones: {total}."
        )
    else:
        analysis = (
            f"The user wants the sum of {a} and {b}. I will add digit by digit. "
            f"{a} is {a1} tens and {a0} ones; {b} is {b1} tens and {b0} ones. "
            f"Ones: {a0} + {b0} = {ones}, so write {digit} and carry {carry}. "
            f"Tens: {a1} + {b1} + {carry} = {tens}. Putting it together, {tens} tens and {digit} ones make {total}. "
            f"The answer is {total}."
        )
    return FinalStep(analysis, f"{a} + {b} = {total}.")


def capital_steps(country: str, capital: str, continent: str, effort: str) -> FinalStep:
    if effort == "low":
        analysis = f"Capital of {country}: {capital}."
    elif effort == "medium":
        analysis = f"The user asks for the capital of {country}. {country} is in {continent}. Its capital is {capital}."
    else:
        analysis = (
            f"The user wants to know the capital city of {country}. {country} is a country in {continent}. "
            f"Its capital is {capital}, where the national government sits. "
            f"I know this from my small table of capitals, so I am sure. Answer in one sentence: {capital}."
        )
    return FinalStep(analysis, f"The capital of {country} is {capital}.")


def weather_call_analysis(city: str, effort: str) -> str:
    if effort == "low":
        return f"Need weather for {city}. Call get_weather."
    if effort == "medium":
        return f"The user wants the current weather in {city}. I have a get_weather tool. Call it with {city}."
    return (
        f"The user wants to know the current weather in {city}. I cannot know live weather myself, "
        f"but the developer gave me a get_weather function that takes a city. "
        f"I will call get_weather with the city {city} and then report its answer."
    )


def weather_answer_steps(city: str, temperature: int, condition: str, effort: str) -> FinalStep:
    if effort == "low":
        analysis = f"{temperature}°C, {condition}."
    elif effort == "medium":
        analysis = f"The tool says {city} is {temperature}°C and {condition}. Report that."
    else:
        analysis = (
            f"The get_weather tool answered for {city}: the temperature is {temperature}°C "
            f"and the sky is {condition}. That is the current weather, so I will report both "
            f"the temperature and the condition in one clear sentence."
        )
    return FinalStep(analysis, f"It is {temperature}°C and {condition} in {city} right now.")


def weather_without_tool_steps(city: str, effort: str) -> FinalStep:
    if effort == "low":
        analysis = "No weather tool. Explain."
    elif effort == "medium":
        analysis = f"The user asks about the weather in {city}. I have no weather tool here, so I cannot check."
    else:
        analysis = (
            f"The user asks about the weather in {city}. Weather changes all the time and I cannot know it "
            f"myself. No get_weather function was given to me in this conversation, so I cannot check it. "
            f"I will say so politely."
        )
    return FinalStep(analysis, f"Sorry, I can't check the weather in {city}: no weather tool is available.")


def greeting_steps(effort: str) -> FinalStep:
    if effort == "low":
        analysis = "A greeting. Reply kindly."
    elif effort == "medium":
        analysis = "The user greets me. Greet back and say what I can do."
    else:
        analysis = (
            "The user is greeting me. I should greet them back in a friendly way and briefly explain "
            "what I can do: I am a tiny demo model, so my skills are small. I can add two-digit numbers, "
            "name capital cities and check the weather."
        )
    return FinalStep(analysis, f"Hello! I am a tiny demo model. I can {SKILLS}. What would you like?")


def refusal_steps(effort: str) -> FinalStep:
    if effort == "low":
        analysis = "Outside my skills. Decline."
    elif effort == "medium":
        analysis = f"The user asks for something I cannot do. I can only {SKILLS}. Decline politely."
    else:
        analysis = (
            "The user asks for something outside my skills. I am a tiny demo model and I can only "
            f"{SKILLS}. I should not guess or make things up. I will decline politely and say what I can do instead."
        )
    return FinalStep(analysis, f"Sorry, I can't help with that. I can {SKILLS}.")


# ---------------------------------------------------------------------------
# Random conversations


def weather_result(rng: random.Random, city: str, temperature: int, condition: str) -> str:
    """What a get_weather implementation might return: JSON in a few shapes, or plain text."""
    shape = rng.randrange(3)
    if shape == 0:
        return json.dumps({"city": city, "temperature_c": temperature, "condition": condition})
    if shape == 1:
        return json.dumps({"temperature": temperature, "unit": "celsius", "conditions": condition})
    return f"{temperature}°C, {condition}"


def weather_function(rng: random.Random) -> Function:
    city: dict[str, Any] = {"type": "string"}
    description = rng.choice(CITY_DESCRIPTIONS)
    if description:
        city["description"] = description
    return Function(
        "get_weather",
        rng.choice(WEATHER_DESCRIPTIONS),
        {"type": "object", "properties": {"city": city}, "required": ["city"]},
    )


def decoy_function(name: str, description: str, params: dict[str, str]) -> Function:
    properties = {key: {"type": kind} for key, kind in params.items()}
    return Function(name, description, {"type": "object", "properties": properties, "required": list(params)})


def random_functions(rng: random.Random) -> tuple[Function, ...]:
    functions = [weather_function(rng)] + [decoy_function(*d) for d in rng.sample(DECOY_TOOLS, rng.randrange(3))]
    rng.shuffle(functions)
    return tuple(functions)


def random_date(rng: random.Random) -> str:
    return f"{rng.randrange(2024, 2027)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"


def make_example(
    rng: random.Random,
    task: str,
    *,
    held_out: bool = False,
    unseen: bool = False,
    effort: str | None = None,
    history_turns: int | None = None,
) -> Example:
    """One random conversation for ``task``: from the training split, or the held-out one.

    ``unseen`` uses the phrasings never trained on (addition, capital and weather only).
    """
    effort = effort or rng.choice(EFFORTS)
    instructions = rng.choice(INSTRUCTIONS) if rng.random() < 0.4 else None
    functions = random_functions(rng) if task == "weather" or rng.random() < 0.35 else ()
    if task == "weather" and not held_out and not unseen and rng.random() < 0.15:
        functions = ()  # the weather asked without a tool: the model must say it cannot check
    example = Example(task, effort, random_date(rng), instructions, functions, [], "", [])
    _fill(rng, example, held_out, unseen)
    turns = history_turns if history_turns is not None else (rng.choice((1, 1, 2)) if rng.random() < 0.15 else 0)
    for _ in range(turns):
        earlier = Example(rng.choice(TASKS), effort, example.date, instructions, functions, [], "", [])
        _fill(rng, earlier, False, False)
        example.history = finished_turn(earlier) + example.history
    return example


def _fill(rng: random.Random, example: Example, held_out: bool, unseen: bool) -> None:
    task, effort = example.task, example.effort
    if task == "addition":
        phrasings = UNSEEN_ADDITION_PHRASINGS if unseen else ADDITION_PHRASINGS
        while True:
            a, b = rng.randrange(10, 100), rng.randrange(10, 100)
            if unseen or addition_held_out(a, b) == held_out:
                break
        example.user = rng.choice(phrasings).format(a=a, b=b)
        example.steps = [addition_steps(a, b, effort)]
        example.expected = {"sum": a + b}
    elif task == "capital":
        phrasings = UNSEEN_CAPITAL_PHRASINGS if unseen else CAPITAL_PHRASINGS
        while True:
            phrasing, (country, capital, continent) = rng.choice(phrasings), rng.choice(CAPITALS)
            if unseen or capital_held_out(phrasing, country) == held_out:
                break
        example.user = phrasing.format(country=country)
        example.steps = [capital_steps(country, capital, continent, effort)]
        example.expected = {"capital": capital}
    elif task == "weather":
        phrasings = UNSEEN_WEATHER_PHRASINGS if unseen else WEATHER_PHRASINGS
        while True:
            phrasing, city = rng.choice(phrasings), rng.choice(CITIES)
            if unseen or weather_held_out(phrasing, city) == held_out:
                break
        example.user = phrasing.format(city=city)
        if not example.functions:
            example.steps = [weather_without_tool_steps(city, effort)]
            example.expected = {"city": city, "tool": False}
            return
        temperature, condition = rng.randrange(-5, 36), rng.choice(CONDITIONS)
        result = weather_result(rng, city, temperature, condition)
        call = ToolStep(weather_call_analysis(city, effort), "get_weather", json.dumps({"city": city}), result)
        example.steps = [call, weather_answer_steps(city, temperature, condition, effort)]
        example.expected = {"city": city, "tool": True, "temperature": temperature, "condition": condition}
    elif task == "greeting":
        choices = HELD_OUT_GREETINGS if held_out else tuple(g for g in GREETINGS if g not in HELD_OUT_GREETINGS)
        example.user = rng.choice(choices)
        example.steps = [greeting_steps(effort)]
    elif task == "refusal":
        choices = HELD_OUT_REFUSALS if held_out else tuple(r for r in REFUSALS if r not in HELD_OUT_REFUSALS)
        example.user = rng.choice(choices)
        example.steps = [refusal_steps(effort)]
    else:
        raise ValueError(f"unknown task {task!r}")


def finished_turn(example: Example) -> list[dict[str, Any]]:
    """An example as earlier history, the way ossrun keeps it: analysis dropped, tool calls kept."""
    entries: list[dict[str, Any]] = [{"role": "user", "content": example.user}]
    for step in example.steps:
        if isinstance(step, ToolStep):
            entries.append(
                {
                    "role": "assistant",
                    "content": "",
                    "reasoning": step.analysis,
                    "tool_calls": [{"name": step.name, "arguments": step.arguments}],
                }
            )
            entries.append({"role": "tool", "name": step.name, "content": step.result})
        else:
            entries.append({"role": "assistant", "content": step.final, "reasoning": step.analysis})
    return entries


# ---------------------------------------------------------------------------
# Checking a model's answers

_NUMBER = re.compile(r"-?\d+")


def answer_correct(example: Example, final: str, tool_arguments: str | None = None) -> bool:
    """Whether ``final`` (and the tool call's arguments, for the weather) answers ``example``."""
    expected = example.expected
    if example.task == "addition":
        numbers = _NUMBER.findall(final)
        return bool(numbers) and int(numbers[-1]) == expected["sum"]
    if example.task == "capital":
        return expected["capital"] in final
    if example.task == "weather":
        if not expected["tool"]:
            return "can't" in final or "cannot" in final
        try:
            called_with = json.loads(tool_arguments or "")
        except json.JSONDecodeError:
            return False
        return (
            called_with == {"city": expected["city"]}
            and str(expected["temperature"]) in _NUMBER.findall(final)
            and expected["condition"] in final
        )
    if example.task == "greeting":
        return final.startswith(("Hello", "Hi")) and "?" in final
    if example.task == "refusal":
        return final.startswith("Sorry") and "can't" in final
    raise ValueError(f"unknown task {example.task!r}")
