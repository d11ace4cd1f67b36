// Express 5 peer of keel: the same users, compute and static endpoints, the same status
// codes and validation rules, errors as RFC 9457 problem documents.
import { createHash, randomBytes } from 'node:crypto';
import bcrypt from 'bcrypt';
import express from 'express';
import jwt from 'jsonwebtoken';
import helmet from 'helmet';
import pg from 'pg';
import { v7 as uuidv7, validate as uuidValidate } from 'uuid';
import { z } from 'zod';

const EMAIL_MAX_CHARS = 254;
const NAME_MIN_CHARS = 2;
const NAME_MAX_CHARS = 100;
const DEFAULT_LIMIT = 20;
const MAX_LIMIT = 100;
const MAX_N = 1024;
const CURSOR_PREFIX = Buffer.from('k1');
// Rust's char::is_control: the Unicode Cc category.
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/u;
const chars = (s) => [...s].length;
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const NewUser = z.strictObject({
  email: z
    .string()
    .refine((s) => chars(s) <= EMAIL_MAX_CHARS, {
      message: `must be at most ${EMAIL_MAX_CHARS} characters`,
      abort: true,
    })
    .pipe(
      z.email({
        pattern: z.regexes.html5Email,
        message: 'must be a valid e-mail address such as ada@example.com',
      }),
    ),
  name: z
    .string()
    .trim()
    .refine((s) => !CONTROL.test(s), {
      message: 'must not contain control characters',
      abort: true,
    })
    .refine((s) => chars(s) >= NAME_MIN_CHARS, {
      message: `must be at least ${NAME_MIN_CHARS} characters after trimming`,
      abort: true,
    })
    .refine((s) => chars(s) <= NAME_MAX_CHARS, {
      message: `must be at most ${NAME_MAX_CHARS} characters after trimming`,
    }),
});

const Registration = z.strictObject({
  email: NewUser.shape.email,
  name: NewUser.shape.name,
  password: z.string().min(12).max(128),
});

const Login = z.strictObject({
  email: z.string().max(EMAIL_MAX_CHARS),
  password: z.string().min(1).max(128),
});

// Authentication as NestJS's documented recipe does it: bcrypt (cost 10) for passwords, an
// HS256 JWT for access, and (like keel) an opaque refresh token stored as its SHA-256.
const BCRYPT_ROUNDS = 10;
const JWT_SECRET = process.env.JWT_SECRET ?? randomBytes(32).toString('hex');
const ACCESS_TTL_SECS = 900;
const REFRESH_TTL_MS = 30 * 24 * 3600 * 1000;
// Compared against when the e-mail is unknown, so that both failures take as long.
const DUMMY_HASH = bcrypt.hashSync(randomBytes(16).toString('hex'), BCRYPT_ROUNDS);

function problem(res, status, type, title, detail, extra = {}) {
  res
    .status(status)
    .type('application/problem+json')
    .send(JSON.stringify({ type, title, status, detail, ...extra }));
}

function validationFailed(res, errors) {
  const n = errors.length;
  problem(res, 422, '/problems/validation', 'Validation failed',
    `${n} input${n === 1 ? '' : 's'} failed validation`, { errors });
}

function fieldError(location, pointer, code, detail) {
  return { location, pointer, code, detail };
}

function zodErrors(issues) {
  const errors = [];
  for (const issue of issues) {
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) {
        errors.push(fieldError('body', `/${key}`, 'unknown_field',
          'unknown field; expected one of: email, name'));
      }
      continue;
    }
    const pointer = issue.path.length > 0 ? '/' + issue.path.join('/') : '';
    if (issue.code === 'invalid_type' && issue.input === undefined) {
      errors.push(fieldError('body', pointer, 'missing', 'this field is required'));
    } else if (issue.code === 'invalid_type') {
      errors.push(fieldError('body', pointer, 'type', `must be ${issue.expected === 'object' ? 'a JSON object' : 'a string'}`));
    } else {
      errors.push(fieldError('body', pointer, 'invalid', issue.message));
    }
  }
  return errors;
}

export function encodeCursor(id) {
  return Buffer.concat([CURSOR_PREFIX, Buffer.from(id.replaceAll('-', ''), 'hex')]).toString('base64url');
}

export function decodeCursor(text) {
  if (!/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) return null;
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

const asyncRoute = (fn) => (req, res, next) => fn(req, res, next).catch(next);

export function createApp({ pool, staticDir }) {
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  app.set('query parser', 'simple');
  app.use(helmet());

  app.get('/livez', (req, res) => {
    res.json({ status: 'ok' });
  });

  app.post('/users', express.json({ limit: '256kb', strict: false }), asyncRoute(async (req, res) => {
    if (!req.is('application/json')) {
      return problem(res, 415, 'about:blank', 'Unsupported Media Type',
        'the request body must be application/json');
    }
    const parsed = NewUser.safeParse(req.body);
    if (!parsed.success) return validationFailed(res, zodErrors(parsed.error.issues));
    const { email, name } = parsed.data;
    const id = uuidv7();
    const now = new Date();
    try {
      await pool.query(
        'INSERT INTO users (id, email, name, version, created_at, updated_at) VALUES ($1, $2, $3, 1, $4, $4)',
        [id, email, name, now],
      );
    } catch (err) {
      if (err.code === '23505') {
        return problem(res, 409, '/problems/email-taken', 'E-mail address already taken',
          'another user already has this e-mail address');
      }
      throw err;
    }
    const stamp = now.toISOString();
    res.status(201).location(`/users/${id}`).set('ETag', '"1"')
      .json({ id, email, name, created_at: stamp, updated_at: stamp });
  }));

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

  const json = express.json({ limit: '256kb', strict: false });

  app.post('/auth/register', json, asyncRoute(async (req, res) => {
    if (!req.is('application/json')) {
      return problem(res, 415, 'about:blank', 'Unsupported Media Type',
        'the request body must be application/json');
    }
    const parsed = Registration.safeParse(req.body);
    if (!parsed.success) return validationFailed(res, zodErrors(parsed.error.issues));
    const { email, name, password } = parsed.data;
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
        return problem(res, 409, '/problems/email-taken', 'E-mail address already taken',
          'another user already has this e-mail address');
      }
      throw err;
    }
    const stamp = now.toISOString();
    const user = { id, email, name, role: 'user', created_at: stamp, updated_at: stamp };
    const tokens = await issueTokens(user);
    res.status(201).location(`/users/${id}`).set('Cache-Control', 'no-store').json({ user, ...tokens });
  }));

  app.post('/auth/login', json, asyncRoute(async (req, res) => {
    if (!req.is('application/json')) {
      return problem(res, 415, 'about:blank', 'Unsupported Media Type',
        'the request body must be application/json');
    }
    const parsed = Login.safeParse(req.body);
    if (!parsed.success) return validationFailed(res, zodErrors(parsed.error.issues));
    const { email, password } = parsed.data;
    const { rows } = await pool.query(
      'SELECT id, role, password_hash FROM users WHERE lower(email) = lower($1)', [email]);
    const user = rows[0];
    const valid = await bcrypt.compare(password, user?.password_hash ?? DUMMY_HASH);
    if (!user?.password_hash || !valid) {
      res.set('WWW-Authenticate', 'Bearer realm="peer"');
      return problem(res, 401, '/problems/invalid-credentials', 'Unauthorized',
        'the e-mail address or the password is wrong');
    }
    res.set('Cache-Control', 'no-store').json(await issueTokens(user));
  }));

  app.get('/users/:id', asyncRoute(async (req, res) => {
    const { id } = req.params;
    if (!UUID_RE.test(id) || !uuidValidate(id)) {
      return validationFailed(res, [fieldError('path', '/id', 'invalid_uuid',
        'must be a UUID such as 0190b6f4-8e1c-7c3a-9f3e-3b1e2a4c5d6f')]);
    }
    const { rows } = await pool.query(`SELECT ${COLUMNS} FROM users WHERE id = $1`, [id]);
    if (rows.length === 0) return problem(res, 404, 'about:blank', 'Not Found', 'no user with this id');
    res.set('ETag', `"${rows[0].version}"`).json(toUser(rows[0]));
  }));

  app.get('/users', asyncRoute(async (req, res) => {
    const errors = [];
    let limit = DEFAULT_LIMIT;
    const rawLimit = req.query.limit;
    if (rawLimit !== undefined) {
      const n = typeof rawLimit === 'string' && /^\+?\d+$/.test(rawLimit) ? Number(rawLimit) : NaN;
      if (Number.isInteger(n) && n >= 1 && n <= MAX_LIMIT) limit = n;
      else errors.push(fieldError('query', '/limit', 'out_of_range', `must be an integer from 1 to ${MAX_LIMIT}`));
    }
    let after = null;
    const rawCursor = req.query.cursor;
    if (rawCursor !== undefined) {
      after = typeof rawCursor === 'string' ? decodeCursor(rawCursor) : null;
      if (after === null) {
        errors.push(fieldError('query', '/cursor', 'invalid_cursor',
          'must be a next_cursor value returned by this endpoint'));
      }
    }
    if (errors.length > 0) return validationFailed(res, errors);
    const { rows } = after === null
      ? await pool.query(`SELECT ${COLUMNS} FROM users ORDER BY id DESC LIMIT $1`, [limit + 1])
      : await pool.query(`SELECT ${COLUMNS} FROM users WHERE id < $1 ORDER BY id DESC LIMIT $2`, [after, limit + 1]);
    const more = rows.length > limit;
    const items = (more ? rows.slice(0, limit) : rows).map(toUser);
    const next = more ? encodeCursor(items[items.length - 1].id) : null;
    if (next) {
      res.set('Link', `</users?${new URLSearchParams({ limit: String(limit), cursor: next })}>; rel="next"`);
    }
    res.json({ items, next_cursor: next });
  }));

  app.get('/compute/matmul', (req, res) => {
    const raw = req.query.n;
    const n = typeof raw === 'string' && /^\+?\d+$/.test(raw) ? Number(raw) : NaN;
    if (!(Number.isInteger(n) && n >= 1 && n <= MAX_N)) {
      return validationFailed(res, [fieldError('query', '/n', 'out_of_range', `must be an integer from 1 to ${MAX_N}`)]);
    }
    res.json({ n, checksum: matmulChecksum(n) });
  });

  if (staticDir) app.use('/static', express.static(staticDir));

  app.use((req, res) => {
    problem(res, 404, 'about:blank', 'Not Found', 'no route matches this path');
  });

  // eslint-disable-next-line no-unused-vars
  app.use((err, req, res, next) => {
    if (err.type === 'entity.parse.failed') {
      return problem(res, 400, '/problems/malformed-json', 'Malformed JSON',
        `the request body is not valid JSON: ${err.message}`);
    }
    if (err.type === 'entity.too.large') {
      return problem(res, 413, 'about:blank', 'Payload Too Large', 'the request body is too large');
    }
    console.error(err);
    problem(res, 500, 'about:blank', 'Internal Server Error', 'the server failed to answer this request');
  });

  return app;
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
