// Fastify 5 peer of keel: the same users, compute and static endpoints, the same status
// codes and validation rules (as JSON schemas), errors as RFC 9457 problem documents.
import { createHash, randomBytes } from 'node:crypto';
import { STATUS_CODES } from 'node:http';
import path from 'node:path';
import Fastify from 'fastify';
import fastifyStatic from '@fastify/static';
import { Ajv } from 'ajv';
import addFormatsModule from 'ajv-formats';
import bcrypt from 'bcrypt';
import jwt from 'jsonwebtoken';
import pg from 'pg';
import { v7 as uuidv7 } from 'uuid';

const addFormats = addFormatsModule.default ?? addFormatsModule;

const MAX_LIMIT = 100;
const MAX_N = 1024;
const CURSOR_PREFIX = Buffer.from('k1');
// Keel's documented name rule: trimmed, 2–100 characters, no control characters.
const NAME_PATTERN = '^\\s*[^\\s\\x00-\\x1F\\x7F-\\x9F][^\\x00-\\x1F\\x7F-\\x9F]{0,98}[^\\s\\x00-\\x1F\\x7F-\\x9F]\\s*$';
// "k1" followed by 16 bytes, base64url without padding.
const CURSOR_PATTERN = '^az[E-H][A-Za-z0-9_-]{21}$';

const userSchema = {
  type: 'object',
  properties: {
    id: { type: 'string' },
    email: { type: 'string' },
    name: { type: 'string' },
    created_at: { type: 'string' },
    updated_at: { type: 'string' },
  },
};

const createUserSchema = {
  body: {
    type: 'object',
    additionalProperties: false,
    required: ['email', 'name'],
    properties: {
      email: { type: 'string', maxLength: 254, format: 'email' },
      name: { type: 'string', minLength: 2, pattern: NAME_PATTERN },
    },
  },
  response: { 201: userSchema },
};

const getUserSchema = {
  params: {
    type: 'object',
    required: ['id'],
    properties: { id: { type: 'string', format: 'uuid', pattern: '^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$' } },
  },
  response: { 200: userSchema },
};

const listUsersSchema = {
  querystring: {
    type: 'object',
    properties: {
      limit: { type: 'integer', minimum: 1, maximum: MAX_LIMIT, default: 20 },
      cursor: { type: 'string', pattern: CURSOR_PATTERN },
    },
  },
  response: {
    200: {
      type: 'object',
      properties: {
        items: { type: 'array', items: userSchema },
        next_cursor: { type: ['string', 'null'] },
      },
    },
  },
};

const registerSchema = {
  body: {
    type: 'object',
    additionalProperties: false,
    required: ['email', 'name', 'password'],
    properties: {
      email: { type: 'string', maxLength: 254, format: 'email' },
      name: { type: 'string', minLength: 2, pattern: NAME_PATTERN },
      password: { type: 'string', minLength: 12, maxLength: 128 },
    },
  },
};

const loginSchema = {
  body: {
    type: 'object',
    additionalProperties: false,
    required: ['email', 'password'],
    properties: {
      email: { type: 'string', maxLength: 254 },
      password: { type: 'string', minLength: 1, maxLength: 128 },
    },
  },
};

// Authentication as NestJS's documented recipe does it: bcrypt (cost 10) for passwords, an
// HS256 JWT for access, and (like keel) an opaque refresh token stored as its SHA-256.
const BCRYPT_ROUNDS = 10;
const JWT_SECRET = process.env.JWT_SECRET ?? randomBytes(32).toString('hex');
const ACCESS_TTL_SECS = 900;
const REFRESH_TTL_MS = 30 * 24 * 3600 * 1000;
// Compared against when the e-mail is unknown, so that both failures take as long.
const DUMMY_HASH = bcrypt.hashSync(randomBytes(16).toString('hex'), BCRYPT_ROUNDS);

const matmulSchema = {
  querystring: {
    type: 'object',
    required: ['n'],
    properties: { n: { type: 'integer', minimum: 1, maximum: MAX_N } },
  },
  response: {
    200: { type: 'object', properties: { n: { type: 'integer' }, checksum: { type: 'number' } } },
  },
};

// Bodies are validated strictly (no type coercion, unknown fields rejected rather than
// removed); query strings and path parameters get the usual coercion of strings to numbers.
function validatorCompiler() {
  const common = { allErrors: true, removeAdditional: false, useDefaults: true };
  const body = addFormats(new Ajv({ ...common, coerceTypes: false }));
  const query = addFormats(new Ajv({ ...common, coerceTypes: 'array' }));
  return ({ schema, httpPart }) => (httpPart === 'body' ? body : query).compile(schema);
}

const LOCATION = { body: 'body', querystring: 'query', params: 'path', headers: 'header' };

function fieldErrors(validation, context) {
  const location = LOCATION[context] ?? context;
  return validation.map((e) => {
    switch (e.keyword) {
      case 'additionalProperties':
        return { location, pointer: `${e.instancePath}/${e.params.additionalProperty}`, code: 'unknown_field', detail: 'unknown field' };
      case 'required':
        return { location, pointer: `${e.instancePath}/${e.params.missingProperty}`, code: 'missing', detail: 'this field is required' };
      case 'type':
        return { location, pointer: e.instancePath, code: 'type', detail: `must be ${e.params.type}` };
      case 'format':
        return { location, pointer: e.instancePath, code: `invalid_${e.params.format}`, detail: `must be a valid ${e.params.format}` };
      case 'minimum':
      case 'maximum':
        return { location, pointer: e.instancePath, code: 'out_of_range', detail: e.message };
      default:
        return { location, pointer: e.instancePath, code: e.keyword, detail: e.message };
    }
  });
}

function problem(reply, status, type, title, detail, extra = {}) {
  return reply
    .code(status)
    .type('application/problem+json')
    .send(JSON.stringify({ type, title, status, detail, ...extra }));
}

export function encodeCursor(id) {
  return Buffer.concat([CURSOR_PREFIX, Buffer.from(id.replaceAll('-', ''), 'hex')]).toString('base64url');
}

export function decodeCursor(text) {
  const bytes = Buffer.from(text, 'base64url');
  if (bytes.length !== 18 || !bytes.subarray(0, 2).equals(CURSOR_PREFIX)) return null;
  const hex = bytes.subarray(2).toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// A[i][j] = (i*j mod 7) + 1, B[i][j] = ((i + j) mod 5) + 1; the sum of all entries of A·B.
export function matmulChecksum(n) {
  const a = new Float64Array(n * n);
  const b = new Float64Array(n * n);
  const c = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      a[i * n + j] = ((i * j) % 7) + 1;
      b[i * n + j] = ((i + j) % 5) + 1;
    }
  }
  for (let i = 0; i < n; i++) {
    const row = i * n;
    for (let k = 0; k < n; k++) {
      const aik = a[row + k];
      const bk = k * n;
      for (let j = 0; j < n; j++) c[row + j] += aik * b[bk + j];
    }
  }
  let sum = 0;
  for (let i = 0; i < c.length; i++) sum += c[i];
  return sum;
}

const COLUMNS = 'id, email, name, version, created_at, updated_at';

function toUser(row) {
  return {
    id: row.id,
    email: row.email,
    name: row.name,
    created_at: row.created_at.toISOString(),
    updated_at: row.updated_at.toISOString(),
  };
}

export function createPool() {
  const workers = Math.max(1, Number.parseInt(process.env.WORKERS ?? '1', 10) || 1);
  const max = Number.parseInt(process.env.DB_POOL_MAX ?? '', 10) || Math.max(2, Math.ceil(16 / workers));
  const pool = new pg.Pool({
    connectionString: process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres',
    max,
  });
  pool.on('error', (err) => console.error('idle client error', err));
  return pool;
}

export function buildApp({ pool, staticDir }) {
  const app = Fastify({ logger: false, bodyLimit: 262_144, return503OnClosing: true });
  app.setValidatorCompiler(validatorCompiler());

  app.setErrorHandler((err, request, reply) => {
    if (err.validation) {
      const errors = fieldErrors(err.validation, err.validationContext);
      const n = errors.length;
      return problem(reply, 422, '/problems/validation', 'Validation failed',
        `${n} input${n === 1 ? '' : 's'} failed validation`, { errors });
    }
    if (err.code === 'FST_ERR_CTP_INVALID_JSON_BODY' || err.code === 'FST_ERR_CTP_EMPTY_JSON_BODY') {
      return problem(reply, 400, '/problems/malformed-json', 'Malformed JSON',
        `the request body is not valid JSON: ${err.message}`);
    }
    const status = err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    if (status === 500) {
      console.error(err);
      return problem(reply, 500, 'about:blank', 'Internal Server Error', 'the server failed to answer this request');
    }
    return problem(reply, status, 'about:blank', STATUS_CODES[status] ?? 'Error', err.message);
  });

  app.setNotFoundHandler((request, reply) =>
    problem(reply, 404, 'about:blank', 'Not Found', 'no route matches this path'));

  app.get('/livez', async () => ({ status: 'ok' }));

  app.post('/users', { schema: createUserSchema }, async (request, reply) => {
    const email = request.body.email;
    const name = request.body.name.trim();
    const id = uuidv7();
    const now = new Date();
    try {
      await pool.query(
        'INSERT INTO users (id, email, name, version, created_at, updated_at) VALUES ($1, $2, $3, 1, $4, $4)',
        [id, email, name, now],
      );
    } catch (err) {
      if (err.code === '23505') {
        return problem(reply, 409, '/problems/email-taken', 'E-mail address already taken',
          'another user already has this e-mail address');
      }
      throw err;
    }
    const stamp = now.toISOString();
    reply.code(201).header('location', `/users/${id}`).header('etag', '"1"');
    return { id, email, name, created_at: stamp, updated_at: stamp };
  });

  async function issueTokens(user) {
    const family = uuidv7();
    const refresh = randomBytes(32).toString('base64url');
    const now = new Date();
    await pool.query(
      'INSERT INTO sessions (id, family_id, user_id, token_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)',
      [uuidv7(), family, user.id, createHash('sha256').update(refresh).digest('hex'), now,
        new Date(now.getTime() + REFRESH_TTL_MS)],
    );
    const access = jwt.sign({ sub: user.id, role: user.role, sid: family }, JWT_SECRET, {
      algorithm: 'HS256', expiresIn: ACCESS_TTL_SECS, issuer: 'keel', audience: 'keel-api', jwtid: uuidv7(),
    });
    return { access_token: access, token_type: 'Bearer', expires_in: ACCESS_TTL_SECS, refresh_token: refresh };
  }

  app.post('/auth/register', { schema: registerSchema }, async (request, reply) => {
    const { email, password } = request.body;
    const name = request.body.name.trim();
    const hash = await bcrypt.hash(password, BCRYPT_ROUNDS);
    const id = uuidv7();
    const now = new Date();
    try {
      await pool.query(
        "INSERT INTO users (id, email, name, role, password_hash, version, created_at, updated_at) VALUES ($1, $2, $3, 'user', $4, 1, $5, $5)",
        [id, email, name, hash, now],
      );
    } catch (err) {
      if (err.code === '23505') {
        return problem(reply, 409, '/problems/email-taken', 'E-mail address already taken',
          'another user already has this e-mail address');
      }
      throw err;
    }
    const stamp = now.toISOString();
    const user = { id, email, name, role: 'user', created_at: stamp, updated_at: stamp };
    reply.code(201).header('location', `/users/${id}`).header('cache-control', 'no-store');
    return { user, ...(await issueTokens(user)) };
  });

  app.post('/auth/login', { schema: loginSchema }, async (request, reply) => {
    const { email, password } = request.body;
    const { rows } = await pool.query(
      'SELECT id, role, password_hash FROM users WHERE lower(email) = lower($1)', [email]);
    const user = rows[0];
    const valid = await bcrypt.compare(password, user?.password_hash ?? DUMMY_HASH);
    if (!user?.password_hash || !valid) {
      reply.header('www-authenticate', 'Bearer realm="peer"');
      return problem(reply, 401, '/problems/invalid-credentials', 'Unauthorized',
        'the e-mail address or the password is wrong');
    }
    reply.header('cache-control', 'no-store');
    return issueTokens(user);
  });

  app.get('/users/:id', { schema: getUserSchema }, async (request, reply) => {
    const { rows } = await pool.query(`SELECT ${COLUMNS} FROM users WHERE id = $1`, [request.params.id]);
    if (rows.length === 0) return problem(reply, 404, 'about:blank', 'Not Found', 'no user with this id');
    reply.header('etag', `"${rows[0].version}"`);
    return toUser(rows[0]);
  });

  app.get('/users', { schema: listUsersSchema }, async (request, reply) => {
    const { limit, cursor } = request.query;
    let after = null;
    if (cursor !== undefined) {
      after = decodeCursor(cursor);
      if (after === null) {
        return problem(reply, 422, '/problems/validation', 'Validation failed', '1 input failed validation', {
          errors: [{ location: 'query', pointer: '/cursor', code: 'invalid_cursor', detail: 'must be a next_cursor value returned by this endpoint' }],
        });
      }
    }
    const { rows } = after === null
      ? await pool.query(`SELECT ${COLUMNS} FROM users ORDER BY id DESC LIMIT $1`, [limit + 1])
      : await pool.query(`SELECT ${COLUMNS} FROM users WHERE id < $1 ORDER BY id DESC LIMIT $2`, [after, limit + 1]);
    const more = rows.length > limit;
    const items = (more ? rows.slice(0, limit) : rows).map(toUser);
    const next = more ? encodeCursor(items[items.length - 1].id) : null;
    if (next) {
      reply.header('link', `</users?${new URLSearchParams({ limit: String(limit), cursor: next })}>; rel="next"`);
    }
    return { items, next_cursor: next };
  });

  app.get('/compute/matmul', { schema: matmulSchema }, async (request) => {
    const { n } = request.query;
    return { n, checksum: matmulChecksum(n) };
  });

  if (staticDir) {
    app.register(fastifyStatic, { root: path.resolve(staticDir), prefix: '/static/' });
  }

  return app;
}
