! omp_f.f90 - Fortran OpenMP checkpoint/restart test (same idea as omp.c).
!
! Build: gfortran -O2 -fopenmp -o omp_f omp_f.f90
! Run:   OMP_NUM_THREADS=4 CR_TEST_GO=/path/to/go CR_TEST_DIR=/tmp/x cr_run ./omp_f
!
! Repeats rounds of a parallel region (static do with +/max reductions on
! int64 and an exact real(8) sum, a dynamic do with an ieor reduction, a
! critical counter and a threadprivate counter) until the GO file exists
! (checked with inquire() in the serial part).  Afterwards everything is
! compared with a serial recomputation (per-k tables, k = round mod 64), and
! a final parallel region must see omp_get_num_threads() == 4.

program omp_f
  use omp_lib
  use iso_c_binding, only: c_int
  use iso_fortran_env, only: int64
  implicit none
  interface
    integer(c_int) function c_usleep(us) bind(C, name='usleep')
      import :: c_int
      integer(c_int), value :: us
    end function c_usleep
  end interface
  integer, parameter :: n = 16384, nk = 64, nthr = 4
  integer(int64) :: a(n)
  integer(int64) :: rounds, tot_s, tot_d, chain_m, chain_x, crit_count, bad_nthreads
  integer(int64) :: k, s, m, x, v, i, r, full, part, col, pc, e
  integer(int64) :: ks(0:nk - 1), kd(0:nk - 1), km(0:nk - 1), kx(0:nk - 1)
  integer(int64) :: es, ed, em, ex
  real(8) :: d
  character(len=4096) :: gopath
  character(len=200) :: msg
  integer :: glen, gstat, rc, nth, t, bad_tp
  integer :: seen(0:nthr - 1)
  logical :: exists
  integer(int64), save :: tp_count = 0
  !$omp threadprivate(tp_count)

  call get_environment_variable('CR_TEST_GO', gopath, glen, gstat)
  if (gstat /= 0 .or. glen == 0) call fail('CR_TEST_GO not set')
  if (omp_get_max_threads() /= nthr) then
    write (msg, '(A,I0,A)') 'omp_get_max_threads() = ', omp_get_max_threads(), ', run with OMP_NUM_THREADS=4'
    call fail(trim(msg))
  end if

  do i = 1, n
    a(i) = modulo(i * 7777_int64, 99991_int64)
  end do
  rounds = 0; tot_s = 0; tot_d = 0; chain_m = 0; chain_x = 0; crit_count = 0; bad_nthreads = 0

  !$omp parallel
  tp_count = 0
  !$omp end parallel

  write (6, '(A)') 'READY'
  flush (6)

  do
    k = modulo(rounds, int(nk, int64))
    s = 0; m = 0; x = 0; d = 0.0d0
    !$omp parallel private(v)
    if (omp_get_num_threads() /= nthr) then
      !$omp atomic
      bad_nthreads = bad_nthreads + 1
    end if
    !$omp do schedule(static) reduction(+:s, d) reduction(max:m)
    do i = 1, n
      v = h(i, k)
      a(i) = a(i) + v
      s = s + v
      d = d + real(v, 8)
      m = max(m, v)
    end do
    !$omp end do
    !$omp do schedule(dynamic, 256) reduction(ieor:x)
    do i = 1, n
      x = ieor(x, h(i, k + nk) * i)
    end do
    !$omp end do
    !$omp critical
    crit_count = crit_count + 1
    !$omp end critical
    tp_count = tp_count + 1
    !$omp end parallel
    tot_s = tot_s + s
    tot_d = tot_d + int(d, int64)
    chain_m = chain(chain_m, m)
    chain_x = chain(chain_x, x)
    rounds = rounds + 1
    inquire (file=trim(gopath), exist=exists)
    if (exists) exit
    rc = c_usleep(100_c_int)
  end do

  ! ---- final region: thread count and threadprivate state ----
  nth = -1; seen = 0; bad_tp = 0
  !$omp parallel private(t)
  t = omp_get_thread_num()
  !$omp critical
  if (t == 0) nth = omp_get_num_threads()
  if (t >= 0 .and. t < nthr) seen(t) = seen(t) + 1
  if (tp_count /= rounds) bad_tp = bad_tp + 1
  !$omp end critical
  !$omp end parallel
  if (nth /= nthr) then
    write (msg, '(A,I0,A)') 'omp_get_num_threads() = ', nth, ' after GO, expected 4'
    call fail(trim(msg))
  end if
  if (any(seen /= 1)) call fail('thread numbers not distinct 0..3')
  if (bad_tp /= 0) call fail('threadprivate counter /= rounds in some thread')
  if (bad_nthreads /= 0) call fail('a parallel region ran with the wrong number of threads')

  ! ---- serial recomputation ----
  do k = 0, nk - 1
    s = 0; ed = 0; m = 0; x = 0
    do i = 1, n
      v = h(i, k)
      s = s + v
      ed = ed + v
      m = max(m, v)
      x = ieor(x, h(i, k + nk) * i)
    end do
    ks(k) = s; kd(k) = ed; km(k) = m; kx(k) = x
  end do
  es = 0; ed = 0; em = 0; ex = 0
  do r = 0, rounds - 1
    k = modulo(r, int(nk, int64))
    es = es + ks(k)
    ed = ed + kd(k)
    em = chain(em, km(k))
    ex = chain(ex, kx(k))
  end do
  if (es /= tot_s) call fail('sum reduction total')
  if (ed /= tot_d) call fail('real(8) reduction total')
  if (em /= chain_m) call fail('max reduction chain')
  if (ex /= chain_x) call fail('ieor reduction chain')
  if (crit_count /= rounds * nthr) call fail('critical counter')
  full = rounds / nk
  part = modulo(rounds, int(nk, int64))
  do i = 1, n
    col = 0; pc = 0
    do k = 0, nk - 1
      v = h(i, k)
      col = col + v
      if (k < part) pc = pc + v
    end do
    e = modulo(i * 7777_int64, 99991_int64) + full * col + pc
    if (a(i) /= e) then
      write (msg, '(A,I0,A,I0,A)') 'array element ', i, ' wrong after ', rounds, ' rounds'
      call fail(trim(msg))
    end if
  end do
  write (0, '(A,I0,A)') 'info omp_f: ', rounds, ' rounds'
  write (6, '(A)') 'PASS omp_f'
  flush (6)

contains
  pure integer(int64) function h(i, k)
    integer(int64), intent(in) :: i, k
    integer(int64) :: t
    t = modulo(i * 40503_int64 + k * 2654435_int64 + ieor(i, k * 7919_int64), 1000003_int64)
    t = modulo(t * t + k, 1000003_int64)
    h = modulo(t * 7_int64 + ieor(t, i), 1000003_int64)
  end function h

  pure integer(int64) function chain(c, v)
    integer(int64), intent(in) :: c, v
    chain = modulo(c * 1000003_int64 + v + 1_int64, 2147483647_int64)
  end function chain

  subroutine fail(msg)
    character(len=*), intent(in) :: msg
    write (6, '(A)') 'FAIL omp_f: '//msg
    flush (6)
    write (0, '(A)') 'FAIL omp_f: '//msg
    flush (0)
    call exit(1)
  end subroutine fail
end program omp_f
