"""The calculator REST service: the reference "existing REST API" the OpenAPI wrapper serves.

It is deliberately a plain REST service -- it knows nothing about MCP -- and
publishes its own OpenAPI 3.1 document at ``/openapi.json``. The mesh kind
``calculator-rest`` runs it; an ``openapi-tools`` service with
``settings.upstream: <its name>`` turns it into the MCP tools ``add``,
``subtract``, ``multiply``, ``divide``, ``power``, ``sqrt`` and ``evaluate``.

``evaluate`` computes an arithmetic expression safely: the text is parsed with
:mod:`ast` and only numbers, ``+ - * / // % **``, unary signs, parentheses and a
few named functions are evaluated -- never ``eval``. Exponents and results are
bounded so ``9**9**9`` is an error, not a hung CPU.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from microhive.errors import InvalidInput

if TYPE_CHECKING:
    from microhive.service import Service, ServiceContext

__all__ = ["MAX_EXPRESSION_CHARS", "OPENAPI", "calculator_routes", "create_service", "evaluate"]

MAX_EXPRESSION_CHARS = 500
_MAX_EXPONENT = 10_000
_MAX_MAGNITUDE = 1e300

Number = int | float
_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_FUNCTIONS: dict[str, Callable[..., Number]] = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": round,
    "floor": math.floor,
    "ceil": math.ceil,
    "log": math.log,
    "exp": math.exp,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "min": min,
    "max": max,
}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}


def _check(value: Any) -> Number:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput("the result is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput("the result is not finite")
    if abs(value) > _MAX_MAGNITUDE:
        raise InvalidInput("the result is too large")
    return value


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise InvalidInput(f"unsupported constant {node.value!r}")
        return node.value
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise InvalidInput(f"unknown name {node.id!r}")
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _check(_UNARY[type(node.op)](_eval(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise InvalidInput(f"exponent {right} is too large (limit {_MAX_EXPONENT})")
        if isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod) and right == 0:
            raise InvalidInput("division by zero")
        try:
            return _check(_BINARY[type(node.op)](left, right))
        except (OverflowError, ValueError) as exc:
            raise InvalidInput(f"cannot compute: {exc}") from None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        fn = _FUNCTIONS.get(node.func.id)
        if fn is None:
            raise InvalidInput(f"unknown function {node.func.id!r}")
        args = [_eval(a) for a in node.args]
        try:
            return _check(fn(*args))
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidInput(f"{node.func.id}: {exc}") from None
    raise InvalidInput(f"unsupported syntax: {type(node).__name__}")


def evaluate(expression: str) -> Number:
    """The value of an arithmetic expression (``"2 * (3 + 4) ** 2"``), computed without eval."""
    if not isinstance(expression, str) or not expression.strip():
        raise InvalidInput("expression must be a non-empty string")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise InvalidInput(f"expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise InvalidInput(f"not an arithmetic expression: {exc.msg}") from None
    return _eval(tree)


# ----------------------------------------------------------------------- REST


def _number(body: dict[str, Any], key: str) -> Number:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"'{key}' must be a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(f"'{key}' must be finite")
    return value


def _binary(op: Callable[[Number, Number], Number]) -> Callable[[dict[str, Any]], Number]:
    def run(body: dict[str, Any]) -> Number:
        a, b = _number(body, "a"), _number(body, "b")
        if op is operator.pow and abs(b) > _MAX_EXPONENT:
            raise InvalidInput(f"exponent {b} is too large (limit {_MAX_EXPONENT})")
        if op is operator.truediv and b == 0:
            raise InvalidInput("division by zero")
        try:
            return _check(op(a, b))
        except (OverflowError, ZeroDivisionError, ValueError) as exc:
            raise InvalidInput(f"cannot compute: {exc}") from None

    return run


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


def _json_endpoint(
    compute: Callable[[dict[str, Any]], Number],
) -> Callable[[Request], Awaitable[JSONResponse]]:
    async def endpoint(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "invalid_input", "the body must be a JSON object")
        if not isinstance(body, dict):
            return _error(400, "invalid_input", "the body must be a JSON object")
        try:
            return JSONResponse({"result": compute(body)})
        except InvalidInput as exc:
            return _error(400, exc.code, exc.message)

    return endpoint


async def _sqrt(request: Request) -> JSONResponse:
    raw = request.query_params.get("x")
    try:
        x = float(raw) if raw is not None else math.nan
    except ValueError:
        x = math.nan
    if not math.isfinite(x):
        return _error(400, "invalid_input", f"query parameter 'x' must be a number, got {raw!r}")
    if x < 0:
        return _error(400, "invalid_input", "cannot take the square root of a negative number")
    return JSONResponse({"result": math.sqrt(x)})


async def _openapi(request: Request) -> JSONResponse:
    return JSONResponse(OPENAPI)


def _json_schema_ref(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}


def _pair_op(op_id: str, summary: str) -> dict[str, Any]:
    return {
        "post": {
            "operationId": op_id,
            "summary": summary,
            "x-mcp-annotations": {"readOnlyHint": True, "idempotentHint": True},
            "requestBody": {
                "required": True,
                "content": _json_schema_ref("Pair"),
            },
            "responses": {
                "200": {"$ref": "#/components/responses/Result"},
                "400": {"$ref": "#/components/responses/Error"},
            },
        }
    }


#: The service's OpenAPI 3.1 document, served at ``/openapi.json``.
OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Calculator",
        "version": "1.0.0",
        "description": "Arithmetic over REST: the reference service for OpenAPI-to-MCP wrapping.",
    },
    "paths": {
        "/add": _pair_op("add", "Add two numbers: a + b."),
        "/subtract": _pair_op("subtract", "Subtract b from a: a - b."),
        "/multiply": _pair_op("multiply", "Multiply two numbers: a * b."),
        "/divide": _pair_op("divide", "Divide a by b: a / b (b must not be zero)."),
        "/power": _pair_op("power", "Raise a to the power b: a ** b."),
        "/sqrt": {
            "get": {
                "operationId": "sqrt",
                "summary": "The square root of x (x must not be negative).",
                "parameters": [
                    {
                        "name": "x",
                        "in": "query",
                        "required": True,
                        "description": "the number to take the square root of",
                        "schema": {"type": "number", "minimum": 0},
                    }
                ],
                "responses": {
                    "200": {"$ref": "#/components/responses/Result"},
                    "400": {"$ref": "#/components/responses/Error"},
                },
            }
        },
        "/evaluate": {
            "post": {
                "operationId": "evaluate",
                "summary": "Evaluate an arithmetic expression such as '2 * (3 + 4) ** 2'.",
                "description": "Supports + - * / // % **, parentheses, pi, e and "
                "sqrt/abs/round/floor/ceil/log/exp/sin/cos/tan/min/max.",
                "x-mcp-annotations": {"readOnlyHint": True, "idempotentHint": True},
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "expression": {
                                        "type": "string",
                                        "maxLength": MAX_EXPRESSION_CHARS,
                                        "description": "the arithmetic expression",
                                    }
                                },
                                "required": ["expression"],
                            }
                        }
                    },
                },
                "responses": {
                    "200": {"$ref": "#/components/responses/Result"},
                    "400": {"$ref": "#/components/responses/Error"},
                },
            }
        },
    },
    "components": {
        "schemas": {
            "Pair": {
                "type": "object",
                "properties": {
                    "a": {"type": "number", "description": "the first operand"},
                    "b": {"type": "number", "description": "the second operand"},
                },
                "required": ["a", "b"],
            },
            "Result": {
                "type": "object",
                "properties": {"result": {"type": "number"}},
                "required": ["result"],
            },
            "Error": {
                "type": "object",
                "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
            },
        },
        "responses": {
            "Result": {
                "description": "the result",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Result"}}
                },
            },
            "Error": {
                "description": "invalid input",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            },
        },
    },
}


def calculator_routes() -> list[Route]:
    """The REST routes, including ``/openapi.json``."""
    return [
        Route("/openapi.json", _openapi, methods=["GET"]),
        Route("/add", _json_endpoint(_binary(operator.add)), methods=["POST"]),
        Route("/subtract", _json_endpoint(_binary(operator.sub)), methods=["POST"]),
        Route("/multiply", _json_endpoint(_binary(operator.mul)), methods=["POST"]),
        Route("/divide", _json_endpoint(_binary(operator.truediv)), methods=["POST"]),
        Route("/power", _json_endpoint(_binary(operator.pow)), methods=["POST"]),
        Route("/sqrt", _sqrt, methods=["GET"]),
        Route(
            "/evaluate",
            _json_endpoint(lambda body: evaluate(body.get("expression"))),  # type: ignore[arg-type]
            methods=["POST"],
        ),
    ]


def calculator_app() -> Starlette:
    """The calculator as a bare Starlette app (for embedding and tests)."""
    return Starlette(routes=calculator_routes())


def create_service(ctx: ServiceContext) -> Service:
    """Mesh kind ``calculator-rest``."""
    from microhive.service import Service

    service = Service(ctx)
    service.add_routes(calculator_routes())
    return service
