/**
 * The Lua scripts that make an epoch visible. Each runs atomically in Redis, so a replicator killed at
 * any instruction leaves the image at the previous committed epoch or the new one, never a mix; with
 * AOF on, Redis logs a script's effects as one MULTI/EXEC, which a truncated AOF drops whole.
 * The scripts touch chunk keys they compute themselves; all carry the VM's hash tag, so they live in
 * the same Redis Cluster slot as the declared keys.
 */

/**
 * Applies a staged incremental epoch.
 * KEYS: meta, hashes, stagedHashes, fence, asm, stage key of batch 0..n-1
 * ARGV: generation, previous epoch, new epoch, chunk key prefix, then meta field/value pairs
 * Returns OK, ALREADY (this epoch is applied), FENCED, or CONFLICT <generation> <epoch> <state>.
 */
export const APPLY_EPOCH_LUA = `
local meta, hkey, shkey, fence, asm = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
if redis.call('EXISTS', fence) == 1 then return 'FENCED' end
local cur = redis.call('HMGET', meta, 'generation', 'epoch', 'state')
if cur[1] == ARGV[1] and cur[2] == ARGV[3] then return 'ALREADY' end
if cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2] or cur[3] ~= 'ok' then
  return 'CONFLICT ' .. tostring(cur[1]) .. ' ' .. tostring(cur[2]) .. ' ' .. tostring(cur[3])
end
local prefix = ARGV[4]
for k = 6, #KEYS do
  local kv = redis.call('HGETALL', KEYS[k])
  for i = 1, #kv, 2 do
    local f, v = kv[i], kv[i + 1]
    local kind, slot, chunk, off = string.match(f, '^(%a):(%d+):(%d+):(%d+)$')
    local ck = prefix .. slot .. ':' .. chunk
    if kind == 'd' then
      redis.call('SETRANGE', ck, tonumber(off), v)
    elseif kind == 'z' and redis.call('EXISTS', ck) == 1 then
      redis.call('SETRANGE', ck, tonumber(off), string.rep('\\0', tonumber(v)))
    end
  end
  redis.call('DEL', KEYS[k])
end
-- Page hashes in a few large HSET/HDEL calls (each call is one command in the AOF, not one per page).
local sh = redis.call('HGETALL', shkey)
local set, del = {}, {}
for i = 1, #sh, 2 do
  if sh[i + 1] == '' then del[#del + 1] = sh[i] else set[#set + 1] = sh[i]; set[#set + 1] = sh[i + 1] end
end
for i = 1, #set, 4000 do redis.call('HSET', hkey, unpack(set, i, math.min(i + 3999, #set))) end
for i = 1, #del, 4000 do redis.call('HDEL', hkey, unpack(del, i, math.min(i + 3999, #del))) end
redis.call('DEL', shkey, asm)
for i = 5, #ARGV, 2 do redis.call('HSET', meta, ARGV[i], ARGV[i + 1]) end
return 'OK'
`;

/**
 * Makes a baseline (written into its generation's own keys) the image.
 * KEYS: meta, fence, asm
 * ARGV: generation, then meta field/value pairs
 * Returns OK, ALREADY, FENCED, or CONFLICT <current generation>.
 */
export const COMMIT_BASELINE_LUA = `
local meta, fence, asm = KEYS[1], KEYS[2], KEYS[3]
if redis.call('EXISTS', fence) == 1 then return 'FENCED' end
local g = redis.call('HGET', meta, 'generation')
if g == ARGV[1] and redis.call('HGET', meta, 'state') == 'ok' then return 'ALREADY' end
if g and tonumber(g) >= tonumber(ARGV[1]) then return 'CONFLICT ' .. g end
redis.call('DEL', asm)
redis.call('HDEL', meta, 'staleReason')
for i = 2, #ARGV, 2 do redis.call('HSET', meta, ARGV[i], ARGV[i + 1]) end
return 'OK'
`;

/** KEYS: fence; ARGV: token, ttl ms. Extends the fence if the token holds it; returns 1, else 0. */
export const FENCE_REFRESH_LUA = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
`;

/** KEYS: fence; ARGV: token. Deletes the fence if the token holds it. */
export const FENCE_RELEASE_LUA = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`;

/**
 * Zeroes the pages a baseline being assembled marks zero. A fresh generation starts all zero, so only
 * pages this baseline already wrote with data need it, and exactly those have a field in the hash table
 * (HDEL says which): nothing else is written, so a sparse image stays sparse and the AOF small.
 * KEYS: hashes; ARGV: chunk key prefix, page size, pages per chunk, then (slot, chunk, first page in chunk, pages) per piece.
 */
export const ZERO_BASELINE_PAGES_LUA = `
local prefix, ps, per = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local zero = string.rep('\\0', ps)
for i = 4, #ARGV, 4 do
  local slot, chunk, first, n = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  local ck = prefix .. slot .. ':' .. chunk
  local pages = math.min(n, math.ceil((redis.call('STRLEN', ck) - first * ps) / ps))
  local base = chunk * per + first
  for p = 0, pages - 1 do
    if redis.call('HDEL', KEYS[1], slot .. ':' .. (base + p)) == 1 then redis.call('SETRANGE', ck, (first + p) * ps, zero) end
  end
end
return 'OK'
`;
