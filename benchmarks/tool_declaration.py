"""How a tool should be declared for gpt-oss to call it: the evidence behind ``--mcp``'s choice.

    python benchmarks/tool_declaration.py [--cities 6]

The demo model (trained like gpt-oss on functions in harmony's ``functions`` namespace) is asked
about the weather with ``get_weather(city)`` declared three ways: as ``functions.get_weather``
(what ``--mcp`` does), in a namespace of its server (``weather.get_weather``), and prefixed by
its server in ``functions`` (``functions.weather__get_weather``). For each, greedy and at
temperature 1.0, it counts which recipient the model's first call goes to: a call to a name
that was not declared misses the tool.
"""

from __future__ import annotations

import argparse
import collections

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cities", type=int, default=6, help="cities asked about (3 questions each)")
    args = parser.parse_args()

    import ossrun
    from ossrun.tools import Toolbox

    model = ossrun.load("demo", ctx=2048)
    for declared, tool in declarations().items():
        for temperature in (0.0, 1.0):
            calls: collections.Counter = collections.Counter()
            for seed, city in enumerate(CITIES[: args.cities]):
                for question in QUESTIONS:
                    first = next((event.recipient for event in model.stream(
                        [{"role": "user", "content": question.format(city)}], tools=Toolbox([tool]), temperature=temperature,
                        seed=seed, max_tool_rounds=0, max_tokens=200) if isinstance(event, ToolCall)), "no call")
                    calls[first] += 1
            total = sum(calls.values())
            print(f"declared {declared:32} temperature {temperature:.1f}: {calls[declared]}/{total} called it; "
                  + ", ".join(f"{name} {count}" for name, count in calls.most_common() if name != declared))
    model.close()


if __name__ == "__main__":
    main()
