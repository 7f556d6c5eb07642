"""How gpt-oss reads tools: the evidence behind how ``--mcp`` declares MCP tools and passes their results.

    python benchmarks/tool_reading.py [--cities 6]

1. Declaration. The demo model (trained like gpt-oss on functions in harmony's ``functions``
   namespace) is asked about the weather with ``get_weather(city)`` declared three ways: as
   ``functions.get_weather`` (what ``--mcp`` does), in a namespace of its server
   (``weather.get_weather``), and prefixed by its server in ``functions``
   (``functions.weather__get_weather``). For each, greedy and at temperature 1.0, it counts which
   recipient the model's first call goes to: a call to a name that was not declared misses the tool.
2. Results. The same question with the tool answering the same JSON indented (as MCP servers
   written with the SDK send it) or on one line (as ``--mcp`` passes it on, like function tools'
   results), at each reasoning effort: it counts the answers that give the city's temperature and
   condition.
"""

from __future__ import annotations

import argparse
import collections
import json

from ossrun.events import ToolCall

DESCRIPTION = "Get the current weather for a city."
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
CITIES = ("Oslo", "Paris", "Lima", "Tokyo", "Cairo", "Berlin", "Madrid", "Rome")
QUESTIONS = ("What's the weather in {}?", "Weather in {}?", "Can you check the weather in {}?")


def declarations() -> dict[str, object]:
    from ossrun.tools import FunctionTool

    return {
        "functions.get_weather": FunctionTool("get_weather", DESCRIPTION, SCHEMA),
        "weather.get_weather": FunctionTool("get_weather", DESCRIPTION, SCHEMA, namespace="weather"),
        "functions.weather__get_weather": FunctionTool("weather__get_weather", DESCRIPTION, SCHEMA),
    }


def declaration(model, cities: int) -> None:
    from ossrun.tools import Toolbox

    for declared, tool in declarations().items():
        for temperature in (0.0, 1.0):
            calls: collections.Counter = collections.Counter()
            for seed, city in enumerate(CITIES[:cities]):
                for question in QUESTIONS:
                    first = next(
                        (
                            event.recipient
                            for event in model.stream(
                                [{"role": "user", "content": question.format(city)}],
                                tools=Toolbox([tool]),
                                temperature=temperature,
                                seed=seed,
                                max_tool_rounds=0,
                                max_tokens=200,
                            )
                            if isinstance(event, ToolCall)
                        ),
                        "no call",
                    )
                    calls[first] += 1
            total = sum(calls.values())
            print(
                f"declared {declared:32} temperature {temperature:.1f}: {calls[declared]}/{total} called it; "
                + ", ".join(f"{name} {count}" for name, count in calls.most_common() if name != declared)
            )


def weather_tool(indent: int | None):
    def get_weather(city: str) -> str:
        """Get the current weather for a city."""
        return json.dumps({"city": city, "temperature_c": 14, "condition": "rainy"}, indent=indent)

    return get_weather


def results(model, cities: int) -> None:
    for shape, indent in (("indented", 2), ("one line", None)):
        get_weather = weather_tool(indent)

        for effort in ("low", "medium", "high"):
            for temperature in (0.0, 1.0):
                right = 0
                for seed, city in enumerate(CITIES[:cities]):
                    reply = model.chat(
                        [{"role": "user", "content": f"What's the weather in {city}?"}],
                        tools=[get_weather],
                        reasoning_effort=effort,
                        temperature=temperature,
                        seed=seed,
                        max_tokens=300,
                    )
                    right += "14" in reply.final and "rain" in reply.final and city in reply.final
                print(f"result {shape:8} effort {effort:6} temperature {temperature:.1f}: {right}/{cities} answers right")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cities", type=int, default=6, help="cities asked about")
    args = parser.parse_args()

    import ossrun

    model = ossrun.load("demo", ctx=2048)
    declaration(model, args.cities)
    results(model, args.cities)
    model.close()


if __name__ == "__main__":
    main()
