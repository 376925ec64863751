-- luachat.batch_idset: a compact set of custom ids for luachat.batch, so a
-- run's memory stays flat however many lines its input has.
--
-- Owns: the 64-bit hash of an id and a set of those hashes, 8 bytes an id:
-- 4096 buckets (by the hash's low bits) of packed, sorted integers, searched
-- by bisection. Two different ids with the same 64-bit hash are taken as the
-- same (about one chance in 10^7 for a file of 10^6 ids); the duplicate check
-- confirms every hit on the ids themselves (luachat.batch.validate).
-- Never: keeps the id strings.
--
--   local set = idset.new()   set:add(idset.hash(id))   local dups = set:finish()
--   set:has(idset.hash(id))   set.count
local M = {}

local pack, unpack = string.pack, string.unpack
local concat, sort = table.concat, table.sort

local BUCKETS = 4096
local MASK = BUCKETS - 1
local PENDING = 32 -- hashes a bucket gathers before packing them

local function rotl(x, r) return (x << r) | (x >> (64 - r)) end

-- 64-bit hash of a string: 8 bytes at a time, murmur3-style mixing, fmix64 at the end.
local function hash(s)
  local n = #s
  local h = 0x9E3779B97F4A7C15 ~ n
  local i = 1
  while i + 7 <= n do
    local w = unpack("<i8", s, i)
    w = rotl(w * 0x87C37B91114253D5, 31) * 0x4CF5AD432745937F
    h = rotl(h ~ w, 27) * 5 + 0x52DCE729
    i = i + 8
  end
  if i <= n then
    local w = unpack("<i8", s:sub(i) .. ("\0"):rep(8 - (n - i + 1)))
    w = rotl(w * 0x87C37B91114253D5, 31) * 0x4CF5AD432745937F
    h = h ~ w
  end
  h = h ~ (h >> 33)
  h = h * 0xFF51AFD7ED558CCD
  h = h ~ (h >> 33)
  h = h * 0xC4CEB9FE1A85EC53
  return h ~ (h >> 33)
end
M.hash = hash

local Set = {}
Set.__index = Set

function M.new()
  return setmetatable({ count = 0, pending = {}, pieces = {}, final = nil }, Set)
end

local function pack_list(t, n)
  if n == 0 then return "" end
  return pack("<" .. ("j"):rep(n), table.unpack(t, 1, n))
end

-- Add a hash (before finish).
function Set:add(h)
  local b = (h & MASK) + 1
  local p = self.pending[b]
  if not p then
    p = {}
    self.pending[b] = p
  end
  p[#p + 1] = h
  self.count = self.count + 1
  if #p >= PENDING then
    local pieces = self.pieces[b]
    if not pieces then
      pieces = {}
      self.pieces[b] = pieces
    end
    pieces[#pieces + 1] = pack_list(p, #p)
    self.pending[b] = nil
  end
end

-- Sort every bucket; returns the set of hashes added more than once
-- (hash -> true). After this, has() works and add() must not be called.
function Set:finish()
  local dups = {}
  local final = {}
  for b = 1, BUCKETS do
    local all = {}
    for _, piece in ipairs(self.pieces[b] or {}) do
      for k = 1, #piece, 8 do all[#all + 1] = unpack("<j", piece, k) end
    end
    for _, h in ipairs(self.pending[b] or {}) do all[#all + 1] = h end
    if #all > 0 then
      sort(all)
      local parts = {}
      for k = 1, #all, 4096 do
        local e = math.min(k + 4095, #all)
        parts[#parts + 1] = pack("<" .. ("j"):rep(e - k + 1), table.unpack(all, k, e))
      end
      for k = 2, #all do
        if all[k] == all[k - 1] then dups[all[k]] = true end
      end
      final[b] = concat(parts)
    end
  end
  self.pending, self.pieces, self.final = nil, nil, final
  return dups
end

-- Is hash h in the set (after finish)?
function Set:has(h)
  local s = self.final[(h & MASK) + 1]
  if not s then return false end
  local lo, hi = 0, #s // 8 - 1
  while lo <= hi do
    local mid = (lo + hi) // 2
    local v = unpack("<j", s, mid * 8 + 1)
    if v == h then return true end
    if v < h then lo = mid + 1 else hi = mid - 1 end
  end
  return false
end

return M
