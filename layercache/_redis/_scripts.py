"""The Lua scripts that keep values and the tag index consistent in Redis.

Layout under a stack's prefix ``P`` (see docs/redis.md):

- ``P v:<key>``  the value (an envelope), with the entry's TTL;
- ``P t:<tag>``  a set of the keys carrying the tag; it lives as long as its longest-
  lived member (or forever if one never expires), so it never outlasts its entries by
  more than that;
- ``P k:<key>``  a set of the key's tags, with the value's TTL, so an overwrite or a
  delete can take the key out of every tag set it was in;
- ``P l:<key>``  the single-flight lock of a load in flight (a random token, with the
  lease as TTL). Any change to the key (a write, a delete, an expire, an invalidation or
  expire of one of the load's tags, a clear) deletes it, and the holder writes its
  result only while its token is still there: a load that began before a change never
  stores its stale result.

Each script is atomic, so a concurrent reader never sees a value without its index.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import hiredis

from .._serializers import HEADER_SIZE, MAGIC, MAX_WINDOW_MS, VERSION, WINDOWS_OFFSET
from ._connection import Command

_V2 = "".join(f"\\{byte}" for byte in MAGIC + bytes([VERSION]))
"""How a version 2 envelope begins, as a Lua string literal (decimal escapes)."""


@dataclass(frozen=True, slots=True)
class Script:
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())

    def evalsha(self, keys: list[str], args: list[str | bytes | int]) -> Command:
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    def eval(self, keys: list[str], args: list[str | bytes | int]) -> Command:
        return ("EVAL", self.source, len(keys), *keys, *args)


# KEYS: value key, key-tags key, tag-set keys...   ARGV: envelope, ttl ms (0 = none),
# user key, tag-set prefix, value prefix, lock prefix, lock token ('' = not a lock
# holder's write), tags...
# A holder's write happens only while its lock still holds its token (returns 0 if not);
# any other write deletes the key's lock, so a load that began earlier cannot store its
# result over this one.
# Each tag set also sheds up to two members whose values are gone (expired) and which
# no load is filling: writes keep a busy tag's set alive, so without this it would
# collect every key it ever held.
# The SET comes first: Redis checks maxmemory only at a script's first write, and only
# if that write may use memory; starting with SREM/DEL would slip past the limit. (The
# lock check before it only reads.)
WRITE = Script("""
local vkey, kkey = KEYS[1], KEYS[2]
local ttl, key, tprefix, vprefix = tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local lkey, token = ARGV[6] .. key, ARGV[7]
if token ~= '' and redis.call('GET', lkey) ~= token then
  return 0
end
if ttl > 0 then
  redis.call('SET', vkey, ARGV[1], 'PX', ttl)
else
  redis.call('SET', vkey, ARGV[1])
end
for _, old in ipairs(redis.call('SMEMBERS', kkey)) do
  redis.call('SREM', tprefix .. old, key)
end
if token == '' then
  redis.call('DEL', kkey, lkey)
else
  redis.call('DEL', kkey)
end
for i = 3, #KEYS do
  local tkey = KEYS[i]
  for _, member in ipairs(redis.call('SRANDMEMBER', tkey, 2)) do
    if redis.call('EXISTS', vprefix .. member, ARGV[6] .. member) == 0 then
      redis.call('SREM', tkey, member)
    end
  end
  -- After the shedding, which may have emptied (so deleted) the set.
  local existed = redis.call('EXISTS', tkey)
  local left = redis.call('PTTL', tkey)
  redis.call('SADD', tkey, key)
  redis.call('SADD', kkey, ARGV[i + 5])
  if ttl == 0 then
    redis.call('PERSIST', tkey)
  elseif existed == 0 or (left >= 0 and left < ttl) then
    redis.call('PEXPIRE', tkey, ttl)
  end
end
if #KEYS > 2 and ttl > 0 then
  redis.call('PEXPIRE', kkey, ttl)
end
return 1
""")

# Takes a key's value and its index entries away: out of each of its tag sets, its tag
# set deleted, its value deleted (returns 1 if there was one). Its lock is the caller's.
_DROP = """
local function drop(key, vkey, kkey, tprefix)
  for _, tag in ipairs(redis.call('SMEMBERS', kkey)) do
    redis.call('SREM', tprefix .. tag, key)
  end
  redis.call('DEL', kkey)
  return redis.call('DEL', vkey)
end
"""

# KEYS: value key 1, key-tags key 1, value key 2, ...   ARGV: tag-set prefix, lock prefix,
# user keys...   Also deletes the keys' locks (see WRITE).
DELETE = Script(
    _DROP
    + """
local tprefix, lprefix = ARGV[1], ARGV[2]
local removed = 0
for i = 3, #ARGV do
  local key = ARGV[i]
  redis.call('DEL', lprefix .. key)
  removed = removed + drop(key, KEYS[2 * i - 5], KEYS[2 * i - 4], tprefix)
end
return removed
"""
)

# KEYS: the tag set.   ARGV: tag-set prefix, value prefix, key-tags prefix, lock prefix,
# the tag. Returns the keys whose values it removed. The set also holds the keys that
# loads carrying the tag are filling (see ACQUIRE): their locks go, so they store nothing.
INVALIDATE_TAG = Script("""
local tprefix, vprefix, kprefix, lprefix, tag = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local removed = {}
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  redis.call('DEL', lprefix .. key)
  local kkey = kprefix .. key
  for _, other in ipairs(redis.call('SMEMBERS', kkey)) do
    if other ~= tag then
      redis.call('SREM', tprefix .. other, key)
    end
  end
  redis.call('DEL', kkey)
  if redis.call('DEL', vprefix .. key) == 1 then
    removed[#removed + 1] = key
  end
end
redis.call('DEL', KEYS[1])
return removed
""")

# Marks the value at vkey stale now, keeping its stale window: the envelope's stale_ms
# (version 2, see layercache/_serializers.py, read here from its header alone). A fresh
# entry then lives stale_ms more, its key-tags set likewise, and its early_ms becomes 0:
# stale from now, as the memory layer's Record.expired makes it. An entry already stale
# is left as it is. Returns true if the entry is kept (stale), false if it has no stale
# window to keep (no TTL, version 1, stale_ms 0, or not a header of ours: a window over
# the bound is forged), nil without a value. SETRANGE, which Redis refuses at maxmemory
# when it is a script's first write, always comes after the lock's DEL.
_MARK_STALE = f"""
local function mark_stale(vkey, kkey)
  local ttl = redis.call('PTTL', vkey)
  if ttl == -2 then
    return nil
  end
  local head = redis.call('GETRANGE', vkey, 0, {HEADER_SIZE - 1})
  if ttl <= 0 or #head ~= {HEADER_SIZE} or string.sub(head, 1, 4) ~= '{_V2}' then
    return false
  end
  local stale, early = 0, 0
  for i = {WINDOWS_OFFSET + 1}, {WINDOWS_OFFSET + 8} do
    stale = stale * 256 + string.byte(head, i)
    early = early * 256 + string.byte(head, i + 8)
  end
  if stale == 0 or stale > {MAX_WINDOW_MS} or early > {MAX_WINDOW_MS} then
    return false
  end
  if ttl > stale then
    redis.call('PEXPIRE', vkey, stale)
    redis.call('PEXPIRE', kkey, stale)
    if early > 0 then
      redis.call('SETRANGE', vkey, {WINDOWS_OFFSET + 8}, string.rep('\\0', 8))
    end
  end
  return true
end
"""

# KEYS: value key 1, key-tags key 1, value key 2, ...   ARGV: tag-set prefix, lock prefix,
# user keys...   Marks each key's entry stale (see _MARK_STALE), or deletes it (DELETE's
# way) if it has no stale window. Deletes the keys' locks: a load in flight stores
# nothing. Returns {the keys kept stale, the keys deleted}.
EXPIRE = Script(
    _DROP
    + _MARK_STALE
    + """
local tprefix, lprefix = ARGV[1], ARGV[2]
local kept, removed = {}, {}
for i = 3, #ARGV do
  local key, vkey, kkey = ARGV[i], KEYS[2 * i - 5], KEYS[2 * i - 4]
  redis.call('DEL', lprefix .. key)
  if mark_stale(vkey, kkey) then
    kept[#kept + 1] = key
  elseif drop(key, vkey, kkey, tprefix) == 1 then
    removed[#removed + 1] = key
  end
end
return {kept, removed}
"""
)

# KEYS: the tag set.   ARGV: tag-set prefix, value prefix, key-tags prefix, lock prefix
# (and the tag, unused: INVALIDATE_TAG's arguments). EXPIRE for every key in the tag
# set: the keys kept stale stay in it (they still carry the tag), the others leave it
# (with the keys that loads carrying the tag are filling, see ACQUIRE: their locks go,
# so they store nothing). Returns {kept, deleted}.
EXPIRE_TAG = Script(
    _DROP
    + _MARK_STALE
    + """
local tprefix, vprefix, kprefix, lprefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local kept, removed = {}, {}
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local vkey, kkey = vprefix .. key, kprefix .. key
  redis.call('DEL', lprefix .. key)
  if mark_stale(vkey, kkey) then
    kept[#kept + 1] = key
  else
    if drop(key, vkey, kkey, tprefix) == 1 then
      removed[#removed + 1] = key
    end
    redis.call('SREM', KEYS[1], key)
  end
end
return {kept, removed}
"""
)

# Distributed single-flight locks (layercache/_distributed.py).
# KEYS: the lock, tag-set keys...   ARGV: token, lease ms, user key.
# Takes the lock if it is free, and enters the key in the load's tag sets, so that an
# invalidation of one of its tags finds the lock (a tag set made here lives at least as
# long as the lease; the holder's WRITE then gives it the entry's TTL). 1 if taken.
ACQUIRE = Script("""
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 0
end
local lease = tonumber(ARGV[2])
for i = 2, #KEYS do
  local left = redis.call('PTTL', KEYS[i])
  redis.call('SADD', KEYS[i], ARGV[3])
  if left == -2 or (left >= 0 and left < lease) then
    redis.call('PEXPIRE', KEYS[i], lease)
  end
end
return 1
""")

# KEYS: the lock, its load's tag sets...   ARGV: lease ms, the token.   Extends the lock
# if it still holds the token, and the tag sets with it (ACQUIRE's rule), so a long load
# stays findable by a tag invalidation. 1 if renewed, 0 if lost (expired, or deleted by a
# change to the key).
RENEW = Script("""
if redis.call('GET', KEYS[1]) ~= ARGV[2] then
  return 0
end
local lease = tonumber(ARGV[1])
redis.call('PEXPIRE', KEYS[1], lease)
for i = 2, #KEYS do
  local left = redis.call('PTTL', KEYS[i])
  if left >= 0 and left < lease then
    redis.call('PEXPIRE', KEYS[i], lease)
  end
end
return 1
""")

# KEYS: the lock, the value, the load's tag sets...   ARGV: the token, the user key.
# Deletes the lock only if it is still ours; if the load stored nothing (it failed, or
# its result went stale), the key also leaves the tag sets ACQUIRE put it in.
RELEASE = Script("""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 0 then
  for i = 3, #KEYS do
    redis.call('SREM', KEYS[i], ARGV[2])
  end
end
return 1
""")

SCRIPTS = (WRITE, DELETE, INVALIDATE_TAG, EXPIRE, EXPIRE_TAG)
LOCK_SCRIPTS = (ACQUIRE, RENEW, RELEASE)
PROBE = Script("return 1")
"""Run once per connection: a server that loads scripts but cannot run them (an ACL
without EVALSHA) is found out at the start, not at the first write."""


def loading(scripts: Sequence[Script]) -> list[Command]:
    """The set-up of a connection that runs ``scripts``: load them (a restarted
    server's empty script cache then costs nothing, and EVALSHA needs no NOSCRIPT
    round trip), and run :data:`PROBE`. A server that cannot run scripts refuses one
    of these (``unknown command``, ``NOPERM``), which fails the start."""
    commands: list[Command] = [("SCRIPT", "LOAD", script.source) for script in scripts]
    commands += [("SCRIPT", "LOAD", PROBE.source), PROBE.evalsha([], [])]
    return commands


async def run_scripts(
    send: Callable[[list[Command]], Awaitable[list[object]]],
    commands: list[Command],
    scripts: Sequence[Script],
    then: Sequence[Command] = (),
) -> list[object]:
    """Send ``commands`` (EVALSHAs among them) with ``send``; return their replies.

    Script calls that meet an empty script cache (a restarted server, or a client that
    never loaded them) are sent again as EVAL, which loads them.

    ``then`` are commands that must run after every one of ``commands`` (the bus's
    PUBLISH after a write): they go in the same batch, and again after a retry, since
    their first run came before the retried scripts. Their replies (from the last
    sending) follow those of ``commands``.
    """
    replies = await send([*commands, *then])
    retry = [i for i, reply in enumerate(replies[: len(commands)]) if _is_noscript(reply)]
    if retry:
        by_sha = {script.sha: script for script in scripts}
        again = [_as_eval(commands[i], by_sha) for i in retry]
        answers = await send([*again, *then])
        for i, reply in zip(retry, answers, strict=False):
            replies[i] = reply
        replies[len(commands) :] = answers[len(again) :]
    return replies


def _is_noscript(reply: object) -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT")


def _as_eval(command: Command, scripts: dict[str, Script]) -> Command:
    script = scripts[str(command[1])]
    return ("EVAL", script.source, *command[2:])
