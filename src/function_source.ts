// Static analysis of a function's source: which names it uses that it does not
// declare itself. A function sent by source must use only globals.
import type * as Acorn from 'acorn';

// Loaded on first use: most processes never send a function by source (saves ~15 ms at start).
let acorn: typeof Acorn | null = null;
function parser(): typeof Acorn {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  acorn ??= require('acorn') as typeof Acorn;
  return acorn;
}

type Node = Acorn.Node & Record<string, unknown>;

/** Parses a function's toString() into an expression source that evaluates to it. */
export function functionExpressionSource(src: string): { expression: string; ast: Node } {
  for (const expression of [`(${src}\n)`, `({${src}\n})`]) {
    let program: Node;
    try {
      program = parser().parse(expression, { ecmaVersion: 'latest' }) as unknown as Node;
    } catch {
      continue;
    }
    const body = program.body as Node[];
    if (body.length !== 1 || body[0].type !== 'ExpressionStatement') continue;
    const ast = body[0].expression as Node;
    if (ast.type === 'ObjectExpression') {
      const props = ast.properties as Node[];
      if (props.length !== 1 || props[0].type !== 'Property') continue;
      // method shorthand `name(...) {...}`: the property's value is the function
      return { expression: `Object.values(${expression})[0]`, ast: props[0].value as Node };
    }
    if (!/Function|Class/.test(ast.type)) continue;
    return { expression, ast };
  }
  throw new SyntaxError('function source could not be parsed');
}

/**
 * A function's expression source (see functionExpressionSource) and the names it refers
 * to but does not declare (free variables), in first-use order.
 */
export function analyseFunctionSource(src: string, allowed: (name: string) => boolean): { expression: string; free: string[] } {
  const { expression, ast } = functionExpressionSource(src);
  const declared = new Set<string>(['arguments']);
  const used: string[] = [];

  const declarePattern = (p: Node | null | undefined): void => {
    if (!p) return;
    switch (p.type) {
      case 'Identifier':
        declared.add(p.name as string);
        break;
      case 'ObjectPattern':
        for (const prop of p.properties as Node[]) declarePattern((prop.type === 'RestElement' ? prop.argument : prop.value) as Node);
        break;
      case 'ArrayPattern':
        for (const el of p.elements as (Node | null)[]) declarePattern(el);
        break;
      case 'RestElement':
        declarePattern(p.argument as Node);
        break;
      case 'AssignmentPattern':
        declarePattern(p.left as Node);
        break;
    }
  };

  const visit = (node: Node, parent: Node | null, key: string): void => {
    switch (node.type) {
      case 'Identifier': {
        if (parent) {
          if ((parent.type === 'MemberExpression' && key === 'property' && !parent.computed) ||
              ((parent.type === 'Property' || parent.type === 'MethodDefinition' || parent.type === 'PropertyDefinition') &&
                key === 'key' && !parent.computed) ||
              parent.type === 'LabeledStatement' || parent.type === 'BreakStatement' ||
              parent.type === 'ContinueStatement' || parent.type === 'MetaProperty') {
            return;
          }
        }
        used.push(node.name as string);
        return;
      }
      case 'VariableDeclarator':
        declarePattern(node.id as Node);
        break;
      case 'FunctionDeclaration':
      case 'FunctionExpression':
      case 'ArrowFunctionExpression':
        if (node.id) declared.add((node.id as Node).name as string);
        for (const p of node.params as Node[]) declarePattern(p);
        break;
      case 'ClassDeclaration':
      case 'ClassExpression':
        if (node.id) declared.add((node.id as Node).name as string);
        break;
      case 'CatchClause':
        declarePattern(node.param as Node | null);
        break;
    }
    for (const k of Object.keys(node)) {
      if (k === 'type' || k === 'start' || k === 'end') continue;
      const v = node[k];
      if (Array.isArray(v)) {
        for (const c of v) if (c && typeof c === 'object' && typeof (c as Node).type === 'string') visit(c as Node, node, k);
      } else if (v && typeof v === 'object' && typeof (v as Node).type === 'string') {
        visit(v as Node, node, k);
      }
    }
  };
  visit(ast, null, '');

  const free: string[] = [];
  for (const name of used) {
    if (!declared.has(name) && !allowed(name) && !free.includes(name)) free.push(name);
  }
  return { expression, free };
}
