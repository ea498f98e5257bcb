#!/usr/bin/perl
# SpamAssassin's own Bayes on the same folds as `mxgate bayes cv`, for a side-by-side comparison.
#
#   scripts/sa_bayes_cv.pl --folds 10 [--misses] --spam DIR... --ham DIR...
#
# Messages are read as mxgate reads them (ham folders, then spam folders, files in name order) and
# message i goes to fold i % folds, so both see the same training and test sets. For each fold a
# fresh SpamAssassin (local tests only, no auto-learning) learns the other folds with the Perl API
# (what sa-learn does) and checks the fold; its Bayes probability is recorded. Prints one JSON line:
# (1 - AUC) %, false positives and negatives at the BAYES_99 cut, and learn/check speed. With
# --misses, each false positive and false negative is named on standard error with its probability.
use strict;
use warnings;
use File::Temp qw(tempdir);
use Mail::SpamAssassin;
use Time::HiRes qw(time);

my ($folds, @spam, @ham, $which, $misses) = (10);
while (my $a = shift @ARGV) {
    if ($a eq '--folds') { $folds = shift @ARGV; next }
    if ($a eq '--misses') { $misses = 1; next }
    if ($a eq '--spam') { $which = \@spam; next }
    if ($a eq '--ham') { $which = \@ham; next }
    die "usage: $0 --folds N [--misses] --spam DIR... --ham DIR...\n" unless $which;
    push @$which, $a;
}
sub files { my @f; for my $d (@_) { opendir(my $dh, $d) or die "$d: $!"; push @f, map { "$d/$_" } sort grep { !/^\./ } readdir $dh; } @f }
my @all;
for my $f (files(@ham)) { open my $fh, '<:raw', $f or die; local $/; push @all, [scalar <$fh>, 0, $f] }
for my $f (files(@spam)) { open my $fh, '<:raw', $f or die; local $/; push @all, [scalar <$fh>, 1, $f] }

my @scores;
my ($learn_t, $learn_n, $check_t, $check_n) = (0, 0, 0, 0);
for my $k (0 .. $folds - 1) {
    my $dir = tempdir(CLEANUP => 1);
    my $sa = Mail::SpamAssassin->new({
        local_tests_only => 1,
        dont_copy_prefs  => 1,
        userstate_dir    => $dir,
        userprefs_filename => "$dir/user_prefs",
        post_config_text => "use_bayes 1\nbayes_path $dir/bayes\nbayes_auto_learn 0\nbayes_auto_expire 0\nuse_bayes_rules 1\nlock_method flock\nbayes_learn_to_journal 0\n",
    });
    $sa->init(1);
    $sa->init_learner({ caller_will_untie => 1 });
    my $t = time;
    for my $i (0 .. $#all) {
        next if $i % $folds == $k;
        my $m = $sa->parse($all[$i][0]);
        my $st = $sa->learn($m, undef, $all[$i][1], 0);
        $st->finish; $m->finish;
        $learn_n++;
    }
    $sa->finish_learner();
    $learn_t += time - $t;
    $t = time;
    for my $i (0 .. $#all) {
        next unless $i % $folds == $k;
        my $m = $sa->parse($all[$i][0]);
        my $st = $sa->check($m);
        my $p = $st->{bayes_score};
        push @scores, [defined $p ? $p : 0.5, $all[$i][1], $all[$i][2]];
        $st->finish; $m->finish;
        $check_n++;
    }
    $check_t += time - $t;
    $sa->finish();
    print STDERR "fold $k done\n";
}
my ($nham, $nspam, $fp, $fn) = (0, 0, 0, 0);
for (@scores) { if ($_->[1]) { $nspam++; $fn++ if $_->[0] < 0.99 } else { $nham++; $fp++ if $_->[0] >= 0.99 } }
if ($misses) {
    for (@scores) {
        print STDERR "false positive: $_->[2] $_->[0]\n" if !$_->[1] && $_->[0] >= 0.99;
        print STDERR "false negative: $_->[2] $_->[0]\n" if $_->[1] && $_->[0] < 0.99;
    }
}
my @sorted = sort { $a->[0] <=> $b->[0] } @scores;
my ($rank_sum, $i) = (0, 0);
while ($i < @sorted) {
    my $j = $i;
    $j++ while $j < @sorted && $sorted[$j][0] == $sorted[$i][0];
    my $avg = ($i + $j + 1) / 2;
    $rank_sum += $avg * scalar(grep { $_->[1] } @sorted[$i .. $j - 1]);
    $i = $j;
}
my $auc = ($rank_sum - $nspam * ($nspam + 1) / 2) / ($nspam * $nham);
printf "{\"engine\":\"SpamAssassin %s Bayes\",\"folds\":%d,\"ham\":%d,\"spam\":%d,\"one_minus_auc_percent\":%.4f,\"bayes99\":{\"false_positives\":%d,\"fp_percent\":%.2f,\"false_negatives\":%d,\"fn_percent\":%.2f},\"learn_msgs_per_s\":%.0f,\"check_msgs_per_s\":%.1f}\n",
    $Mail::SpamAssassin::VERSION, $folds, $nham, $nspam, 100 * (1 - $auc), $fp, 100 * $fp / $nham, $fn, 100 * $fn / $nspam,
    $learn_n / $learn_t, $check_n / $check_t;
